"""What every command family shares: the ``--config`` option, the store, and how output looks.

Results go to standard output, one JSON object a line with ``--json`` (``json_line``); problems
go to standard error as ``mailpipe: …`` (``complain``); moments are the operator's local time
to the minute (``local``), the same in every listing. Text that came from mail (subjects,
envelopes, names) is printed through ``shown``, so nobody's escape sequence reaches the
operator's terminal.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mailpipe import config as configuration
from mailpipe.store.backends import open_store
from mailpipe.store.sql import SQLStore

Commands = Any  # argparse's subparsers action, whose class argparse keeps private


def json_line(document: Any) -> None:
    print(json.dumps(document, ensure_ascii=False))


# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # tabs, newlines stay


def shown(text: str, controls: re.Pattern[str] = _CONTROLS) -> str:
    """``text`` for a terminal: control characters escaped as ``\\x1b`` (``\\u202e``), visible
    and inert, so a subject or an envelope cannot move the cursor, retitle the window or hide
    what follows."""
    return controls.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def shown_bytes(data: bytes) -> bytes:
    """A raw message for a terminal: its lines as they are (bytes that are not UTF-8 too), the
    controls in them escaped as ``shown`` does."""
    return shown(data.decode("utf-8", "surrogateescape"), _CONTROLS_IN_LINES).encode("utf-8", "surrogateescape")


def complain(text: str) -> None:
    print(f"mailpipe: {text}", file=sys.stderr)


def local(at: float) -> str:
    """A moment as the operator's clock shows it, to the minute, the same in every listing."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


@contextmanager
def opened_store(config: configuration.Config) -> Iterator[SQLStore]:
    """The daemon's store (SQLite, or the shared PostgreSQL), for one command."""
    store = open_store(config)
    try:
        yield store
    finally:
        store.close()
