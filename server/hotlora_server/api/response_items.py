"""A reply's text as a response's output items, and the events that build them one by one, as OpenAI
streams them.

The text is read for tool calls as chat reads it (`chat_tools.call_reader`: the same parser, the same
`tool_choice` rules), into content and calls. Content opens a `message` item, a call a `function_call`
item (after the message, when the reply had text first); each item is done when the next begins or the
reply ends. A whole response is the same text fed at once with the events left unsent, so a streamed
response puts together to exactly the whole one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .. import protocol as p
from ..tools import CallArguments, CallStart, ContentText, Item
from .chat_tools import CallReader


@dataclass
class _Message:
    id: str
    text: str = ""
    status: p.ItemStatus = "in_progress"


@dataclass
class _Call:
    id: str
    call_id: str
    name: str
    arguments: str = ""
    status: p.ItemStatus = "in_progress"


class OutputItems:
    """One response's output so far: fed the reply's text, it answers with the events that text makes;
    `close` ends the last item and `output` is the whole list. `reader` reads calls (None: all content)."""

    def __init__(self, rid: str, reader: CallReader | None) -> None:
        self.rid = rid
        self.items: list[_Message | _Call] = []
        self._calls = reader() if reader is not None else None

    def feed(self, text: str) -> list[BaseModel]:
        if self._calls is None:
            return self._add(ContentText(text)) if text else []
        return [event for item in self._calls.feed(text) for event in self._add(item)]

    def close(self, status: p.ItemStatus) -> list[BaseModel]:
        """The reply ended: what the reader held back is read, and the last item is done with `status` (a
        reply of nothing is an empty message)."""
        held = self._calls.finish() if self._calls is not None else []
        events = [event for item in held for event in self._add(item)]
        if not self.items:
            events += self._open_message()
        return events + self._close(status)

    def output(self) -> list[p.OutputItem]:
        return [self._item(item) for item in self.items]

    # -- items ---------------------------------------------------------------------------------------------

    def _add(self, item: Item) -> list[BaseModel]:
        if isinstance(item, ContentText):
            events = [] if isinstance(self._open_item, _Message) else self._open_message()
            message = self.items[-1]
            assert isinstance(message, _Message)
            message.text += item.text
            events.append(p.TextDeltaEvent(item_id=message.id, output_index=self._index, delta=item.text))
            return events
        if isinstance(item, CallStart):
            started = _Call(id="fc_" + item.id.removeprefix("call_"), call_id=item.id, name=item.name)
            return self._close("completed") + self._open(started)
        assert isinstance(item, CallArguments)
        call = self._open_item
        assert isinstance(call, _Call)
        call.arguments += item.text
        return [p.ArgumentsDeltaEvent(item_id=call.id, output_index=self._index, delta=item.text)]

    @property
    def _index(self) -> int:
        return len(self.items) - 1

    @property
    def _open_item(self) -> _Message | _Call | None:
        """The item being written, if any."""
        last = self.items[-1] if self.items else None
        return last if last is not None and last.status == "in_progress" else None

    def _open_message(self) -> list[BaseModel]:
        messages = sum(isinstance(item, _Message) for item in self.items)
        suffix = f"_{messages}" if messages else ""  # the first is `msg_<request id>`
        return self._close("completed") + self._open(_Message(id=f"msg_{self.rid}{suffix}"))

    def _open(self, item: _Message | _Call) -> list[BaseModel]:
        self.items.append(item)
        events: list[BaseModel] = [
            p.OutputItemEvent(
                type="response.output_item.added", output_index=self._index, item=self._item(item)
            )
        ]
        if isinstance(item, _Message):
            events.append(
                p.ContentPartEvent(
                    type="response.content_part.added",
                    item_id=item.id,
                    output_index=self._index,
                    part=p.OutputText(text=""),
                )
            )
        return events

    def _close(self, status: p.ItemStatus) -> list[BaseModel]:
        item = self._open_item
        if item is None:
            return []
        item.status = status
        index, done = self._index, self._item(item)
        events: list[BaseModel]
        if isinstance(item, _Message):
            assert isinstance(done, p.OutputMessage)
            events = [
                p.TextDoneEvent(item_id=item.id, output_index=index, text=item.text),
                p.ContentPartEvent(
                    type="response.content_part.done",
                    item_id=item.id,
                    output_index=index,
                    part=done.content[0],
                ),
            ]
        else:
            events = [p.ArgumentsDoneEvent(item_id=item.id, output_index=index, arguments=item.arguments)]
        return [*events, p.OutputItemEvent(type="response.output_item.done", output_index=index, item=done)]

    @staticmethod
    def _item(item: _Message | _Call) -> p.OutputItem:
        """An item as OpenAI writes it; in progress, a message has no text part yet and a call no
        arguments."""
        done = item.status != "in_progress"
        if isinstance(item, _Message):
            content = [p.OutputText(text=item.text)] if done else []
            return p.OutputMessage(id=item.id, status=item.status, content=content)
        arguments = item.arguments if done else ""
        return p.FunctionToolCall(
            id=item.id, call_id=item.call_id, name=item.name, arguments=arguments, status=item.status
        )
