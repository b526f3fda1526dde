"""What a Responses request carries besides its options: the items of `input` (messages, the function calls
an earlier answer made and their outputs) and the function tools, in the Responses API's flattened shapes.

Every other kind of input item, tool or `tool_choice` (hosted tools, references to stored items, …) is
refused by its type with a message that names it, before pydantic tries the shapes it knows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    with_config,
)
from typing_extensions import TypedDict

from .common import MAX_CONTENT_PARTS, MAX_MESSAGES, FunctionName, Text, _Open, _Strict
from .tools import MAX_TOOLS, FunctionDefinition, NamedFunction, NamedToolChoice, ToolDefinition


@with_config(ConfigDict(strict=True, extra="ignore"))
class InputText(TypedDict):
    """A text part of an input message: `input_text`, or an `output_text` part of an answer sent back (its
    `annotations` and `logprobs` are ignored)."""

    type: Literal["input_text", "output_text"]
    text: Text


InputParts = Annotated[list[InputText], Field(max_length=MAX_CONTENT_PARTS, fail_fast=True)]
CallId = Annotated[Text, Field(min_length=1)]


def _text(content: str | list[InputText]) -> str:
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


class InputMessage(_Open):
    """A message (OpenAI's `EasyInputMessage`, or an output message sent back, whose `id` and `status` mean
    nothing here)."""

    type: Literal["message"] | None = None
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | InputParts
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return _text(self.content)


class FunctionCallItem(_Open):
    """A call an earlier answer made (its `function_call` output item, sent back)."""

    type: Literal["function_call"]
    call_id: CallId
    name: FunctionName
    arguments: Text  # JSON text, as the model wrote it
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Open):
    """What the client's function returned for the call `call_id`."""

    type: Literal["function_call_output"]
    call_id: CallId
    output: Text | InputParts
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return _text(self.output)


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem
_ITEM_KINDS: dict[str, type[InputItem]] = {
    "message": InputMessage,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


def _by_type(item: Any, _: ValidatorFunctionWrapHandler) -> InputItem:
    """An item validated as the kind its `type` names (a message may leave it out), so that a problem is
    said once, at its field, rather than once for every kind the item is not."""
    if isinstance(item, InputMessage | FunctionCallItem | FunctionCallOutputItem):
        return item
    kind = item.get("type") if isinstance(item, dict) else None
    cls = _ITEM_KINDS.get("message" if kind is None else str(kind))
    if cls is None:
        raise ValueError(
            f"input items of type `{str(kind)[:40]}` are not supported: only messages, `function_call` and "
            "`function_call_output` (hotlora keeps no stored items to refer to)"
        )
    return cls.model_validate(item)


def _calls_answered(items: list[InputItem]) -> list[InputItem]:
    """A `function_call_output` answers a call sent before it (OpenAI refuses one that does not)."""
    calls: set[str] = set()
    for i, item in enumerate(items):
        if isinstance(item, FunctionCallItem):
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem) and item.call_id not in calls:
            raise ValueError(
                f"item {i} (`function_call_output`) answers call '{item.call_id[:64]}', which no earlier "
                "`function_call` item made"
            )
    return items


InputItems = Annotated[
    list[Annotated[InputItem, WrapValidator(_by_type)]],
    Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True),
    AfterValidator(_calls_answered),
]


# -- tools ----------------------------------------------------------------------------------------------


class FunctionTool(FunctionDefinition):
    """A function tool as the Responses API writes it: chat's function definition beside `type`."""

    type: Literal["function"]

    def chat_tool(self) -> ToolDefinition:
        """The same tool in chat's nested shape (its fields are valid already: not checked again)."""
        function = FunctionDefinition.model_construct(**self.model_dump(exclude={"type"}))
        return ToolDefinition.model_construct(type="function", function=function)


def _function_tool(tool: Any) -> Any:
    if isinstance(tool, dict) and tool.get("type") != "function":
        raise ValueError(
            f"tools of type `{str(tool.get('type'))[:40]}` are not supported: only `function` tools "
            "(hotlora runs no hosted tools)"
        )
    return tool


FunctionTools = Annotated[
    list[Annotated[FunctionTool, BeforeValidator(_function_tool)]],
    Field(max_length=MAX_TOOLS, fail_fast=True),
]


class FunctionChoice(_Strict):
    """`{"type": "function", "name": ...}`: the answer is a call to that function."""

    type: Literal["function"]
    name: FunctionName

    def chat_choice(self) -> NamedToolChoice:
        return NamedToolChoice(type="function", function=NamedFunction(name=self.name))


def _function_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") != "function":
        raise ValueError(
            f"a `tool_choice` of type `{str(choice.get('type'))[:40]}` is not supported: only 'auto', "
            "'none', 'required' or {'type': 'function', 'name': ...}"
        )
    return choice


ToolChoice = Annotated[
    Literal["auto", "none", "required"] | FunctionChoice, BeforeValidator(_function_choice)
]
