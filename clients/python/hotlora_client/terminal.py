"""`hotlora-chat` (also `hotlora chat`, `python -m hotlora_client`): a terminal chat with a hotlora server.

Replies stream in as they are generated and the conversation is kept; commands switch the model, blend
adapters, set the system prompt. Errors are one readable line, never a traceback. With stdin not a
terminal (a pipe, a file) it reads one message or command per line and echoes each, so its output reads
as a transcript.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from ._client import Client
from .errors import APIConnectionError, APIStatusError, AuthenticationError, HotloraError

HELP = """\
commands:
  /model NAME           talk to NAME: the base model, an adapter, or a blend like a*0.7+b*0.3
  /blend a=0.7,b=0.3    talk to a weighted blend of adapters (add a method: /blend a=1,b=1 linear)
  /system TEXT          set the system prompt (/system alone removes it)
  /reset                forget the conversation (the system prompt stays)
  /models               list the base model and the adapters
  /help                 this help
  /quit                 leave (also /exit, Ctrl-D)"""


def build_parser(prog: str = "hotlora-chat") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Chat with a hotlora server in the terminal. Type /help in the chat for its commands.",
    )
    parser.add_argument(
        "--base-url", help="the server (default $HOTLORA_BASE_URL, else http://127.0.0.1:8000)"
    )
    parser.add_argument("--api-key", help="the server's API key (default $HOTLORA_API_KEY)")
    parser.add_argument("--model", help="start with this model, adapter or blend (default: the base model)")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--max-tokens", type=int, default=512, help="longest reply, in tokens (default 512)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    parser.add_argument("--seed", type=int, help="sampling seed, for repeatable replies")
    return parser


class ChatSession:
    """One conversation: the target (model, adapter or blend), the system prompt and the turns so far."""

    def __init__(
        self,
        client: Client,
        *,
        out: TextIO,
        err: TextIO,
        model: str | None = None,
        system: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.out = out
        self.err = err
        self.target: dict[str, Any] = {"model": model} if model else {}
        self.label = model or ""
        self.system = system
        self.history: list[dict[str, str]] = []
        self.options = {key: value for key, value in (options or {}).items() if value is not None}

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self, lines: Iterable[str], echo: bool) -> int:
        """Greet, then handle each line until /quit or the end of input. 1 when the server is unreachable."""
        if not self.connect():
            return 1
        for line in lines:
            text = line.strip()
            if echo:
                self.say(f"you> {text}")
            if text and not self.handle(text):
                break
        return 0

    def connect(self) -> bool:
        try:
            models = self.client.models.list()
        except HotloraError as exc:
            self.error(exc)
            return False
        base = next((m.id for m in models if not m.is_adapter), "?")
        self.label = self.label or base
        adapters = ", ".join(m.id for m in models if m.is_adapter) or "none"
        self.say(f"hotlora chat at {self.client.base_url}, talking to {self.label} (adapters: {adapters})")
        self.say("type a message, or /help for the commands")
        return True

    def handle(self, text: str) -> bool:
        """One line: a command or a message. False when it is time to leave."""
        command, _, arg = text.partition(" ") if text.startswith("/") else ("", "", text)
        arg = arg.strip()
        if command in ("/quit", "/exit", "/q"):
            return False
        handlers = {
            "": self.ask,
            "/model": self.set_model,
            "/blend": self.set_blend,
            "/system": self.set_system,
            "/reset": self.reset,
            "/models": self.list_models,
            "/help": self.help,
        }
        handler = handlers.get(command)
        if handler is None:
            self.say(f"unknown command {command}; /help lists the commands")
            return True
        try:
            handler(arg)
        except HotloraError as exc:
            self.error(exc)
        return True

    # -- commands -------------------------------------------------------------------------------------------

    def ask(self, text: str) -> None:
        """Send the message with the conversation so far and print the reply as it streams in."""
        self.history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        self.out.write(f"{self.label}> ")
        self.out.flush()
        try:
            with self.client.chat(messages, stream=True, **self.target, **self.options) as stream:
                try:
                    for piece in stream.text_stream:
                        self.out.write(piece)
                        self.out.flush()
                except KeyboardInterrupt:
                    self.out.write(" [interrupted]")
        except HotloraError:
            self.say("")
            self.history.pop()  # a failed turn is not part of the conversation
            raise
        self.say("")
        self.history.append({"role": "assistant", "content": stream.text})

    def set_model(self, name: str) -> None:
        if not name:
            self.say(f"talking to {self.label}")
            return
        if "*" not in name and "+" not in name:  # a blend string is checked by the server when used
            self.require_models([name])
        self.target, self.label = {"model": name}, name
        self.say(f"now talking to {name}")

    def set_blend(self, arg: str) -> None:
        spec, _, method = arg.partition(" ")
        weights: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, eq, weight = part.partition("=")
            try:
                weights[name.strip()] = float(weight) if eq else 1.0
            except ValueError:
                self.say(f"'{weight}' is not a number (the form is /blend a=0.7,b=0.3)")
                return
        if not weights:
            self.say("give the adapters and their weights: /blend a=0.7,b=0.3")
            return
        self.require_models(list(weights))
        self.target = {"blend": weights, **({"blend_method": method.strip()} if method.strip() else {})}
        self.label = "+".join(f"{name}*{weight:g}" for name, weight in weights.items())
        self.say(
            f"now talking to the blend {self.label}" + (f" ({method.strip()})" if method.strip() else "")
        )

    def set_system(self, text: str) -> None:
        self.system = text or None
        self.say(f"system prompt set: {text}" if text else "system prompt removed")

    def reset(self, _: str) -> None:
        self.history.clear()
        self.say("conversation forgotten")

    def list_models(self, _: str) -> None:
        for model in self.client.models.list():
            kind = "adapter" if model.is_adapter else "base model"
            mark = "*" if model.id == self.label else " "
            self.say(f"{mark} {model.id}  ({kind})")

    def help(self, _: str) -> None:
        self.say(HELP)

    # -- helpers --------------------------------------------------------------------------------------------

    def require_models(self, names: list[str]) -> None:
        known = {model.id for model in self.client.models.list()}
        missing = [name for name in names if name not in known]
        if missing:
            raise HotloraError(f"no model named {', '.join(missing)}; available: {', '.join(sorted(known))}")

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, exc: HotloraError) -> None:
        message = exc.message if isinstance(exc, APIStatusError | APIConnectionError) else str(exc)
        if isinstance(exc, AuthenticationError):
            message += " (give the key with --api-key or HOTLORA_API_KEY)"
        self.out.flush()
        self.err.write(f"error: {message}\n")
        self.err.flush()


def _prompted(prompt: str) -> Iterator[str]:
    """Lines typed at a terminal, with line editing and history where `readline` exists."""
    try:
        import readline  # noqa: F401 - enables editing for input()
    except ImportError:
        pass
    while True:
        try:
            yield input(prompt)
        except EOFError:
            print()
            return


def main(argv: list[str] | None = None, prog: str = "hotlora-chat") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        client = Client(args.base_url, args.api_key)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    options = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    session = ChatSession(
        client, out=sys.stdout, err=sys.stderr, model=args.model, system=args.system, options=options
    )
    interactive = sys.stdin.isatty()
    lines = _prompted("you> ") if interactive else sys.stdin
    try:
        with client:
            return session.run(lines, echo=not interactive)
    except KeyboardInterrupt:
        print()
        return 130


if __name__ == "__main__":
    sys.exit(main())
