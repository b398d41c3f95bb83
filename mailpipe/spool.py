"""The durable queue between "250 Ok" and the next hop.

A spool is one SQLite file in WAL mode with ``synchronous=FULL``: a committed transaction has
been fsync'ed, so ``enqueue`` returning means the message survives a crash or power loss.
All writes go through one committer thread (:mod:`mailpipe.committer`) that applies every
operation waiting at that moment in one transaction, so a single fsync acknowledges a whole group
of concurrent SMTP sessions — the group commit that lets a Python daemon keep up with Postfix.

States: ``incoming`` (new) and ``deferred`` (failed before, waiting for ``next_attempt``) are
ready to be claimed; ``active`` is claimed by a worker; ``hold`` is parked by the operator, or by
a worker that wants a person to decide (``hold_active``, with the reason); ``quarantine`` holds
poison messages with their reason. A message released from ``hold`` is marked ``overridden``: the
operator said "send it anyway", and the worker must not hold it again for the same reason. A
retry the operator asked for (``flush``, or ``release`` of a message tried before) is ``manual``:
if it fails, it is not counted in ``attempts``, so it does not double the backoff.

One file may hold several queues (the ``listener`` column: ``submission`` and ``outbound`` share
``outbound.sqlite``), so that handing a message from one to the next (``replace``) is one
transaction: it is in exactly one queue at every instant. A message leaves the spool only when
the next hop accepted it (``ack``). ``recover`` returns ``active`` messages to the queue after a
crash; hand-offs must be idempotent because such a message may already have been delivered.

A storage fault (disk full, read-only file, I/O error, a corrupt page) fails the operations it
hits with their ``sqlite3`` error and is remembered as ``Spool.fault`` until ``probe`` proves the
file is whole and writable again; the committer thread itself never dies of one.

This module knows nothing of SMTP or of what a worker does with a message.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailpipe.committer import Committer
from mailpipe.errors import SpoolUnreadable

log = logging.getLogger("mailpipe.spool")

STATES = ("incoming", "deferred", "active", "hold", "quarantine")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    listener TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    rcpt_tos TEXT NOT NULL,
    peer TEXT NOT NULL,
    helo TEXT NOT NULL,
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    stage_failures INTEGER NOT NULL DEFAULT 0,
    claims INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    held_from TEXT,
    submitter TEXT NOT NULL DEFAULT '',
    overridden INTEGER NOT NULL DEFAULT 0,
    manual INTEGER NOT NULL DEFAULT 0,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (next_attempt) WHERE state IN ('incoming', 'deferred');
CREATE INDEX IF NOT EXISTS messages_state ON messages (state, received_at);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""

# Columns added after the first release, for spool files written by an older mailpipe.
_ADDED_COLUMNS = {"submitter": "TEXT NOT NULL DEFAULT ''", "overridden": "INTEGER NOT NULL DEFAULT 0",
                  "manual": "INTEGER NOT NULL DEFAULT 0"}
# An attempt an operator asked for (``queue flush``/``release``: ``manual``) that fails again is not
# counted in ``attempts``, so it neither shortens the message's life in retries nor doubles its backoff.
_COUNTED = "attempts = attempts + CASE WHEN manual THEN 0 ELSE 1 END, manual = 0"

_COLUMNS = (
    "id, state, listener, mail_from, rcpt_tos, peer, helo, received_at, size, attempts, "
    "stage_failures, claims, next_attempt, last_error, submitter, overridden, manual"
)


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    peer: str
    helo: str
    listener: str
    submitter: str = ""  # the agent who authenticated on submission; empty for inbound mail


@dataclass(frozen=True)
class Entry:
    """One spooled message's envelope and bookkeeping, without its bytes."""

    id: str
    state: str
    envelope: Envelope
    received_at: float
    size: int
    attempts: int
    stage_failures: int
    claims: int
    next_attempt: float
    last_error: str
    overridden: bool = False
    manual: bool = False  # this attempt was asked for by an operator (flush, release)

    @property
    def recovered(self) -> bool:
        """Claimed before: a previous hand-off may have completed before a crash."""
        return self.claims > 1


@dataclass(frozen=True)
class Message:
    entry: Entry
    data: bytes

    @property
    def id(self) -> str:
        return self.entry.id


@dataclass(frozen=True)
class Stats:
    depth: dict[str, int]
    oldest_age: dict[str, float]


def new_queue_id(now: float | None = None) -> str:
    """16 Crockford base32 characters: 48 bits of milliseconds then 32 random bits, so ids sort
    by arrival like Postfix's long queue ids and never repeat across restarts."""
    value = (int((now if now is not None else time.time()) * 1000) << 32) | secrets.randbits(32)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(75, -1, -5))


def connect(path: Path) -> sqlite3.Connection:
    """The spool file, created or brought to the current schema; ``SpoolUnreadable`` names the
    file when it is no spool (corrupt, another kind of file, a directory nobody may write)."""
    try:
        return _connect(path)
    except (sqlite3.DatabaseError, OSError) as exc:
        raise SpoolUnreadable(f"spool {path}: cannot be opened: {exc}; move it aside (and restore it from "
                              "a backup) to start with an empty one") from None


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
        present = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        for column, declaration in _ADDED_COLUMNS.items():
            if column not in present:
                conn.execute(f"ALTER TABLE messages ADD COLUMN {column} {declaration}")
    except BaseException:
        conn.close()
        raise
    return conn


def probe(conn: sqlite3.Connection, now: float) -> None:
    """Raises unless every page reads back whole and a write commits (call in a transaction)."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError(f"spool file is corrupt: {'; '.join(problems)}")
    conn.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (now,))


def _entry(row: tuple[Any, ...]) -> Entry:
    (qid, state, listener, mail_from, rcpts, peer, helo, received_at, size, attempts, stage_failures,
     claims, next_attempt, last_error, submitter, overridden, manual) = row
    return Entry(qid, state, Envelope(mail_from, _recipients(rcpts), peer, helo, listener, submitter),
                 _number(received_at), int(_number(size)), int(_number(attempts)), int(_number(stage_failures)),
                 int(_number(claims)), _number(next_attempt), last_error, bool(overridden), bool(manual))


def _number(stored: Any) -> float:
    """A number column as ``insert`` and the updates wrote it: TypeError for anything else."""
    if isinstance(stored, bool) or not isinstance(stored, int | float):
        raise TypeError(f"not a number: {stored!r:.40}")
    return stored


def _recipients(stored: str) -> tuple[str, ...]:
    """The envelope's recipients as ``insert`` wrote them: ValueError for anything else (a row
    written or damaged by something other than mailpipe)."""
    recipients = json.loads(stored)
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise ValueError(f"recipients are not a list of addresses: {stored[:100]!r}")
    return tuple(recipients)


def _listed(row: tuple[Any, ...]) -> Entry:
    """An entry for listing: one whose recipients cannot be read is shown with what is wrong with
    it, so that an operator can find it and remove or repair it."""
    try:
        return _entry(row)
    except Exception as exc:  # JSON nested past the recursion limit raises RecursionError
        (qid, state, listener, mail_from, _, peer, helo, *_) = (str(field) for field in row)
        numbers = [field if isinstance(field, int | float) and not isinstance(field, bool) else 0 for field in row]
        return Entry(qid, state, Envelope(mail_from, ("(unreadable)",), peer, helo, listener, str(row[14])),
                     numbers[7], int(numbers[8]), int(numbers[9]), int(numbers[10]), int(numbers[11]), numbers[12],
                     f"unreadable spool entry: {type(exc).__name__}: {str(exc)[:200]}")


# Operations: plain functions of a connection, shared by the daemon's committer and the CLI.

def insert(conn: sqlite3.Connection, qid: str, envelope: Envelope, data: bytes, now: float) -> str:
    conn.execute(
        "INSERT INTO messages (id, state, listener, mail_from, rcpt_tos, peer, helo, received_at, size,"
        " next_attempt, submitter, data) VALUES (?, 'incoming', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (qid, envelope.listener, envelope.mail_from, json.dumps(list(envelope.rcpt_tos)), envelope.peer,
         envelope.helo, now, len(data), now, envelope.submitter, data),
    )
    return qid


def replace(conn: sqlite3.Connection, qid: str, successors: Iterable[tuple[str, Envelope, bytes]], now: float) -> None:
    """Hands ``qid`` on to the next queue in this file as ``successors``, in the caller's
    transaction. Idempotent: a successor id that exists already is kept as it is."""
    for successor, envelope, data in successors:
        if not conn.execute("SELECT 1 FROM messages WHERE id = ?", (successor,)).fetchone():
            insert(conn, successor, envelope, data, now)
    remove(conn, qid)


def claim(conn: sqlite3.Connection, limit: int, now: float, listener: str | None = None,
          unreadable: list[tuple[str, str]] | None = None) -> list[Message]:
    """Up to ``limit`` messages due now, claimed; a row that cannot be read is quarantined instead,
    and added to ``unreadable`` with the reason. The due messages are found through the index kept
    for it, named: without statistics SQLite chose ``messages_state`` and read the row of every
    queued message at each claim, so draining a backlog cost time in the square of its depth
    (claiming alone: 0.31 ms of CPU a message from a spool of 4,000, 1.2 ms from 20,000; now 0.09)."""
    which, args = ("AND listener = ?", (listener,)) if listener else ("", ())
    rows = conn.execute(
        "UPDATE messages SET state = 'active', claims = claims + 1 WHERE id IN ("
        " SELECT id FROM messages INDEXED BY messages_ready"
        f" WHERE state IN ('incoming', 'deferred') AND next_attempt <= ? {which}"
        f" ORDER BY next_attempt LIMIT ?) RETURNING {_COLUMNS}, data", (now, *args, limit)).fetchall()
    claimed = []
    for row in rows:
        try:
            if not isinstance(row[-1], bytes):
                raise TypeError(f"the message is not stored as bytes but as {type(row[-1]).__name__}")
            claimed.append(Message(_entry(row[:-1]), row[-1]))
        except Exception as exc:  # not as insert wrote it (JSON nested too deep raises RecursionError)
            reason = f"unreadable spool entry: {type(exc).__name__}: {str(exc)[:200]}"
            quarantine(conn, row[0], reason)
            if unreadable is not None:
                unreadable.append((row[0], reason))
    return sorted(claimed, key=lambda m: m.entry.next_attempt)


def remove(conn: sqlite3.Connection, qid: str) -> bool:
    return conn.execute("DELETE FROM messages WHERE id = ?", (qid,)).rowcount > 0


def defer(conn: sqlite3.Connection, qid: str, reason: str, next_attempt: float, stage_failure: bool) -> None:
    conn.execute(
        "UPDATE messages SET state = 'deferred', next_attempt = ?, last_error = ?,"
        f" {'manual = 0' if stage_failure else _COUNTED}, stage_failures = stage_failures + ?"
        " WHERE id = ? AND state = 'active'",
        (next_attempt, reason, int(stage_failure), qid))


def narrow(conn: sqlite3.Connection, qid: str, rcpt_tos: Iterable[str], reason: str, next_attempt: float) -> None:
    """Defers a message for some of its recipients only: the others are done with."""
    conn.execute(
        f"UPDATE messages SET state = 'deferred', rcpt_tos = ?, next_attempt = ?, last_error = ?, {_COUNTED}"
        " WHERE id = ? AND state = 'active'",
        (json.dumps(list(rcpt_tos)), next_attempt, reason, qid))


def hold_active(conn: sqlite3.Connection, qid: str, reason: str) -> None:
    """A worker parks a claimed message for a person to decide (``queue release`` sends it)."""
    conn.execute("UPDATE messages SET state = 'hold', held_from = 'incoming', last_error = ? WHERE id = ?"
                 " AND state = 'active'", (reason, qid))


def quarantine(conn: sqlite3.Connection, qid: str, reason: str) -> None:
    conn.execute("UPDATE messages SET state = 'quarantine', last_error = ? WHERE id = ?", (reason, qid))


def hold(conn: sqlite3.Connection, qid: str) -> bool:
    return conn.execute(
        "UPDATE messages SET held_from = state, state = 'hold' WHERE id = ? AND state IN ('incoming', 'deferred')",
        (qid,)).rowcount > 0


def release(conn: sqlite3.Connection, qid: str, now: float) -> bool:
    """Back to the queue, ready now; also how an operator retries a quarantined message."""
    return conn.execute(
        "UPDATE messages SET state = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'incoming' END,"
        " overridden = overridden OR state = 'hold', held_from = NULL, stage_failures = 0, next_attempt = ?,"
        " manual = attempts > 0 WHERE id = ? AND state IN ('hold', 'quarantine')",
        (now, qid)).rowcount > 0


def flush(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute("UPDATE messages SET next_attempt = ?, manual = 1"
                        " WHERE state = 'deferred' AND next_attempt > ?", (now, now)).rowcount


def recover(conn: sqlite3.Connection) -> int:
    return conn.execute(
        "UPDATE messages SET state = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'incoming' END"
        " WHERE state = 'active'").rowcount


def stats(conn: sqlite3.Connection, now: float, listener: str | None = None) -> Stats:
    depth = dict.fromkeys(STATES, 0)
    oldest = dict.fromkeys(STATES, 0.0)
    which, args = ("WHERE listener = ?", (listener,)) if listener else ("", ())
    for state, count, first in conn.execute(
            f"SELECT state, count(*), min(received_at) FROM messages {which} GROUP BY state", args):
        depth[state] = count
        oldest[state] = max(0.0, now - first)
    return Stats(depth, oldest)


def entries(conn: sqlite3.Connection, ids: Iterable[str] = ()) -> list[Entry]:
    wanted = list(ids)
    if wanted:
        marks = ",".join("?" * len(wanted))
        rows = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE id IN ({marks}) ORDER BY id", wanted)
    else:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM messages ORDER BY id")
    return [_listed(row) for row in rows]


def ids(conn: sqlite3.Connection) -> list[str]:
    """Every queue id, in order: what ``hold``/``release``/``delete ALL`` walk, without reading
    each message's envelope (a queue of a million is a few tens of megabytes of ids)."""
    return [qid for (qid,) in conn.execute("SELECT id FROM messages ORDER BY id")]


def body(conn: sqlite3.Connection, qid: str) -> bytes | None:
    row = conn.execute("SELECT data FROM messages WHERE id = ?", (qid,)).fetchone()
    return bytes(row[0]) if row else None


class Spool:
    """The daemon's asynchronous view of one spool file."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = path
        self._clock = clock
        self._committer = Committer(connect(path), f"spool:{path.name}")
        self._arrivals: dict[str, asyncio.Event] = {}

    def arrival(self, listener: str) -> asyncio.Event:
        """Set when a message enters ``listener``'s queue: one event per queue, so the worker of
        one queue clearing it never hides an arrival from the worker of another."""
        return self._arrivals.setdefault(listener, asyncio.Event())

    async def enqueue(self, envelope: Envelope, data: bytes, queue_id: str | None = None) -> str:
        """Returns the queue id once the message is durable on disk."""
        now = self._clock()
        qid = await self._committer.submit(
            lambda conn: insert(conn, queue_id or new_queue_id(now), envelope, data, now))
        self.arrival(envelope.listener).set()
        return qid

    async def enqueue_once(self, envelope: Envelope, data: bytes, queue_id: str) -> None:
        """Like ``enqueue`` with a fixed id, for a message derived from another: queuing it again
        (a repeat after a crash) keeps the one already there."""
        await self.replace("", [(queue_id, envelope, data)])

    async def claim(self, limit: int, listener: str | None = None, done: Sequence[str] = (),
                    quarantined: Callable[[str], None] = lambda qid: None) -> list[Message]:
        """Up to ``limit`` messages due now; ``done`` (messages already handed on) leave the spool
        in the same commit, so a busy worker's acknowledgements cost no commit of their own.
        ``quarantined`` hears of each row quarantined because it could not be read, once committed."""
        now = self._clock()
        done = list(done)  # as in replace: an operation may run twice

        unreadable: list[tuple[str, str]] = []

        def operation(conn: sqlite3.Connection) -> list[Message]:
            unreadable.clear()  # a group run again in savepoints runs this again
            for qid in done:
                remove(conn, qid)
            return claim(conn, limit, now, listener, unreadable)

        claimed = await self._committer.submit(operation)
        for qid, reason in unreadable:  # logged once committed, not at each run of the operation
            log.error("quarantined", extra={"queue_id": qid, "reason": reason})
            quarantined(qid)
        return claimed

    async def replace(self, qid: str, successors: Iterable[tuple[str, Envelope, bytes]]) -> None:
        """``qid`` leaves this queue and ``successors`` enter the next, in one commit."""
        now = self._clock()
        successors = list(successors)  # the operation may run twice (its group re-run): not an iterator
        await self._committer.submit(lambda conn: replace(conn, qid, successors, now))
        for _, envelope, _ in successors:
            self.arrival(envelope.listener).set()

    async def narrow(self, qid: str, rcpt_tos: Iterable[str], reason: str, delay: float) -> None:
        when = self._clock() + delay
        rcpt_tos = list(rcpt_tos)  # as in replace: an operation may run twice
        await self._committer.submit(lambda conn: narrow(conn, qid, rcpt_tos, reason, when))

    async def hold(self, qid: str, reason: str) -> None:
        await self._committer.submit(lambda conn: hold_active(conn, qid, reason))

    async def ack(self, *qids: str) -> None:
        """Each of ``qids`` leaves the spool, all in one commit."""
        await self._committer.submit(lambda conn: [remove(conn, qid) for qid in qids])

    async def defer(self, qid: str, reason: str, delay: float, *, stage_failure: bool = False) -> None:
        when = self._clock() + delay
        await self._committer.submit(lambda conn: defer(conn, qid, reason, when, stage_failure))

    async def quarantine(self, qid: str, reason: str) -> None:
        await self._committer.submit(lambda conn: quarantine(conn, qid, reason))

    async def recover(self) -> int:
        return await self._committer.submit(recover)

    async def stats(self, listener: str | None = None) -> Stats:
        now = self._clock()
        return await self._committer.submit(lambda conn: stats(conn, now, listener))

    async def probe(self) -> bool:
        """Tries the file again after a fault; True (and the fault forgotten) once it is whole
        and takes writes."""
        now = self._clock()
        try:
            await self._committer.submit(lambda conn: probe(conn, now))
        except sqlite3.Error:
            return False
        self._committer.fault = ""
        return True

    @property
    def healthy(self) -> bool:
        return self._committer.alive

    @property
    def fault(self) -> str:
        """Why the last operation failed for a reason of the file or disk; empty once a probe
        has committed since."""
        return self._committer.fault

    @property
    def commit_groups(self) -> tuple[int, int]:
        """(transactions, operations) so far: their ratio is the group-commit factor."""
        return self._committer.groups, self._committer.operations

    def close(self) -> None:
        self._committer.close()


class SpoolLock:
    """Refuses a second daemon on the same state directory; released by the kernel on any exit."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RuntimeError(f"another mailpipe daemon holds {directory / 'lock'}") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        os.close(self._fd)
