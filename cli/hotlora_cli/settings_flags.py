"""The server's `Settings` as command-line flags, and back: flags win over `HOTLORA_*`, which win over defaults.

Every field of `Settings` is a flag, `--<field>` with `-` for `_`, derived here rather than declared a
second time: the field's description is the help, its default is shown from the model, a Literal gives
the choices, a tuple field is repeatable, a bool is `--x` (when off by default) or `--x/--no-x`. Adding a
flag is adding a field with a description. Every flag defaults to None, "not given", so that
`Settings.build` lets `HOTLORA_<FIELD>` and then the field's default decide.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import types
from collections.abc import Iterable
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ByteSize, ValidationError
from pydantic.fields import FieldInfo

from hotlora_server.logs import configure_logging
from hotlora_server.settings import Settings


def add_settings_flags(parser: argparse.ArgumentParser, names: Iterable[str] = Settings.model_fields) -> None:
    """One flag for each of the `Settings` fields `names` (all of them by default), in their order."""
    for name in names:
        field = Settings.model_fields[name]
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, help=flag_help(field), **_kind(field)
        )


def flag_help(field: FieldInfo) -> str:
    """The field's description, then its default and upper bound as the model says them."""
    shown = None if field.is_required() else _shown_default(field.default)
    notes = [f"default {shown}"] if shown is not None else []
    notes += [f"at most {m.le}" for m in field.metadata if getattr(m, "le", None) is not None]
    text = f"{field.description} ({', '.join(notes)})" if notes else str(field.description)
    return text.replace("%", "%%")  # argparse formats help with %


def _kind(field: FieldInfo) -> dict[str, Any]:
    annotation = _without_none(field.annotation)
    if get_origin(annotation) is Literal:
        return {"choices": get_args(annotation)}
    if annotation is bool:  # off by default: the flag turns it on; else it can be turned either way
        return {"action": "store_true" if field.default is False else argparse.BooleanOptionalAction}
    if get_origin(annotation) is tuple:
        return {"action": "append"}
    if annotation in (int, float):
        return {"type": annotation}
    return {}  # text: pydantic reads paths, sizes and JSON from it as from the environment


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _shown_default(default: Any) -> str | None:
    """A default worth printing, as a user would type it; None where the description says what "not
    given" means (no value, an empty list, an unset flag, a nested model)."""
    if default is None or default is False or default == ():
        return None
    if isinstance(default, BaseModel):
        return None
    if default is True:
        return "on"
    if isinstance(default, ByteSize):
        return re.sub(r"\.0(?=[A-Za-z])", "", default.human_readable(decimal=False))  # 4.0GiB -> 4GiB
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings the parsed flags and the environment make; `SystemExit` saying which are invalid."""
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        return Settings.build(flags, os.environ)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise SystemExit(f"hotlora: invalid settings: {problems}") from None


def start_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    # bitsandbytes suggests, at import, an optional CPU kernel that only the Hugging Face hub serves
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
