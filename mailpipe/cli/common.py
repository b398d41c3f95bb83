"""What every command family shares: the ``--config`` option, the store, and how output looks.

Results go to standard output, one JSON object a line with ``--json`` (``json_line``); problems
go to standard error as ``mailpipe: …`` (``complain``); moments are the desk's local time
to the minute (``local``), the same in every listing. Text that came from mail (subjects,
envelopes, names) is printed through ``shown``, so nobody's escape sequence reaches the
operator's terminal. A reading command that finds no state raises ``StateNotFound`` with where
it looked; files holding secrets or personal data are written owner-only (``private_file``);
``chown_needed`` says how the daemon's user gets a file.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from mailpipe import config as configuration
from mailpipe.store.backends import open_store
from mailpipe.store.sql import SQLStore

Commands = Any  # argparse's subparsers action, whose class argparse keeps private
SERVICE_USER = "mailpipe"  # User= of the shipped unit, created by its sysusers file


def owner_of(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def chown_needed(path: Path) -> str:
    """The command that lets the daemon's user read ``path``, or "" when it already owns it."""
    return "" if owner_of(path) == SERVICE_USER else f"chown {SERVICE_USER}:{SERVICE_USER} {path.absolute()}"


def private_file(path: Path) -> TextIO:
    """A text file for secrets or personal data: owner-only (0600) from the first byte, even when it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8")


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


def local(at: float, zone: str, spec: str = "%Y-%m-%d %H:%M") -> str:
    """A moment on the desk's clock (``triage.timezone``, whatever the server's zone), the same
    in every listing."""
    return datetime.fromtimestamp(at, ZoneInfo(zone)).strftime(spec)


class StateNotFound(RuntimeError):
    """A reading command found none of the daemon's state: it says where it looked, and creates nothing."""

    def __init__(self, what: str, config: configuration.Config):
        _, looked = config.state_search()
        super().__init__(f"no {what}; looked at: " + "; ".join(looked) + ". Run commands as the daemon's user with"
                         " its config: runuser -u mailpipe -- mailpipe …, or --config PATH")


@contextmanager
def opened_store(config: configuration.Config, create: bool = False) -> Iterator[SQLStore]:
    """The daemon's store (SQLite, or the shared PostgreSQL), for one command. Only commands
    that bring data in (``create``) make a new SQLite file; the others say where they looked."""
    if not create and not config.store.url and not config.store_path.exists():
        raise StateNotFound(f"store at {config.store_path.absolute()}", config)
    store = open_store(config)
    try:
        yield store
    finally:
        store.close()
