"""`hotlora chat`: the client package's terminal chat (`hotlora-chat`), which speaks only HTTP."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run(argv: Sequence[str]) -> int:
    """The chat parses its own options; the client is imported only now, and may be missing."""
    try:
        from hotlora_client.terminal import main as chat_main
    except ImportError:
        print(
            "hotlora: `hotlora chat` needs the client package: pip install ./clients/python", file=sys.stderr
        )
        return 1
    return chat_main(list(argv), prog="hotlora chat")
