"""Group commit: one thread owning one SQLite connection applies every operation waiting at that
moment in one transaction, so one fsync answers a whole group of concurrent callers.

An operation is a function of the connection, run in the committer's thread; its caller awaits
an asyncio future settled with the operation's result or error. An operation that raises is
undone alone: the group is rolled back and run again with each operation in its own savepoint
(the common group, where none fails, pays no savepoints), so operations must be functions of
the database alone. A storage fault (see ``storage_error``) fails the whole group and is kept
as ``fault`` until the owner clears it; the thread itself never dies of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from mailpipe.offload import Outcome, settle_from_thread

T = TypeVar("T")
_Operation = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]

_MAX_GROUP = 512


def storage_error(exc: BaseException) -> bool:
    """A fault of the file or the disk under it, not of the operation: SQLite's "disk full",
    "readonly database", "disk I/O error", "database is locked" (OperationalError) and "database
    disk image is malformed" (DatabaseError itself); not a constraint or a programming error."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class Committer:
    """One thread owning one connection; applies queued operations a group per transaction."""

    def __init__(self, conn: sqlite3.Connection, name: str):
        self._conn = conn
        self._ops: queue.SimpleQueue[_Operation | None]
        self._ops = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.groups = 0
        self.operations = 0
        self.fault = ""  # the last storage error, until a probe commits

    def submit(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._ops.put((op, future))
        return future

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._ops.put(None)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            first = self._ops.get()
            if first is None:
                return
            group = [first]
            while len(group) < _MAX_GROUP:
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._ops.put(None)
                    break
                group.append(item)
            self._apply(group)

    def _apply(self, group: list[_Operation]) -> None:
        outcomes: list[Outcome]
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                outcomes = [(future, op(self._conn), None) for op, future in group]
            except BaseException as exc:  # the caller's to handle, as in the offload: the thread goes on
                if storage_error(exc):  # SQLite may have rolled the whole transaction back
                    raise
                self._conn.execute("ROLLBACK")
                self._conn.execute("BEGIN IMMEDIATE")
                outcomes = self._isolated(group)
            self._conn.execute("COMMIT")
        except BaseException as exc:  # the whole group failed: disk full, read-only, I/O error
            if storage_error(exc):
                self.fault = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            outcomes = [(future, None, exc) for _, future in group]
        self.groups += 1
        self.operations += len(group)
        settle_from_thread(outcomes)

    def _isolated(self, group: list[_Operation]) -> list[Outcome]:
        """The group again after one of its operations raised, each operation in its own
        savepoint, so that the one that fails is rolled back alone and the others commit. The
        common group, where none fails, pays no savepoints."""
        outcomes: list[Outcome] = []
        for op, future in group:
            self._conn.execute("SAVEPOINT op")
            try:
                outcomes.append((future, op(self._conn), None))
            except BaseException as exc:
                if storage_error(exc):
                    raise
                self._conn.execute("ROLLBACK TO op")
                outcomes.append((future, None, exc))
            self._conn.execute("RELEASE op")
        return outcomes

