"""What every query class of the store stands on: a connection, and one way to write.

``SQLStore`` and the query classes it inherits (``deliverability``, ``desk``, ``transfer``) share
this base, so the write transaction is written once: a query that writes more than one
statement, or reads before it writes, does so inside ``_transaction()``. The dialect subclass
supplies ``_conn`` and, when plain ``BEGIN`` is not what it needs, ``_BEGIN``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

Connection = Any  # sqlite3.Connection, or the PostgreSQL adapter that speaks like one


class SQLBase:
    _BEGIN = "BEGIN"

    def __init__(self) -> None:
        # One writer at a time inside this process: SQLite's own busy handler would make the
        # others sleep in steps of up to 100 ms; a lock hands over the moment a commit is done.
        self._writing = threading.Lock()

    def _conn(self) -> Connection:
        raise NotImplementedError

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """This thread's connection inside a write transaction under the in-process write lock:
        committed when the block ends, by a ``return`` too (a block that returns early has
        written nothing, so its commit ends a transaction that only read), rolled back when it
        raises. The rollback is skipped when the transaction is already gone (SQLite ends it by
        itself on some errors), so a ``ROLLBACK`` refused does not hide the error that
        mattered."""
        with self._writing:
            conn = self._conn()
            conn.execute(self._BEGIN)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
