"""What every command family shares: the ``--config`` option, the store, and how output looks.

Results go to standard output, one JSON object a line with ``--json`` (``json_line``); problems
go to standard error as ``mailpipe: …`` (``complain``); moments are the operator's local time
to the minute (``local``), the same in every listing.
"""

from __future__ import annotations

import json
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
