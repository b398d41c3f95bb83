"""Maildir delivery, exactly once per queue id, made durable a group of deliveries at a time.

The file name is derived from the queue id, not made unique per attempt, so a message that is
delivered again after a crash (delivered, but the spool never heard) finds its earlier copy in
``new/`` or, once the agent's client has seen it, in ``cur/`` with flags, and is not written
twice. Write to ``tmp/``, fsync, rename into ``new/``, fsync the directory: the order the
Maildir specification and a crash both require.

One thread (``_Writer``) does every delivery's file work, taking all the deliveries waiting at
that moment as one group, the way the spool's committer groups commits: every file of the group
is written, then each is fsync'ed (the first fsync commits the file system's journal for the
others too), then all are renamed into ``new/``, then each mailbox's ``new/`` is fsync'ed once
for the whole group. A delivery returns only after its mailbox's directory fsync, so the spool
acknowledges a message only once its files are durable; a delivery that fails (its mailbox
unwritable) fails alone, and one whose directory fsync fails is retried whole.

A Maildir file holds a message in the local text convention, lines ending in LF, as Postfix's
``local`` and Dovecot's LDA write it: mail clients reading the file (mutt, Thunderbird's Maildir
store) show a CRLF file with ``^M`` on every line. Only the line endings change (``unix_lines``):
the bytes of every line stay as received, so DKIM signatures still verify (verifiers and IMAP
servers put the CRLF back, RFC 5322 section 2.3).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import queue
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailpipe.config import Agent
from mailpipe.deliver import TemporaryFailure
from mailpipe.spool import Message

_SUBDIRS = ("tmp", "new", "cur")
_MAX_GROUP = 64  # deliveries per group: bounds the files a group holds open


class MaildirDeliverer:
    method = "maildir"

    def __init__(self, root: Path):
        self.root = root
        self._ready: set[Path] = set()  # mailboxes made in this process (read and written by the writer thread)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def mailbox(self, owner: Agent) -> Path:
        return self.root / owner.id

    async def deliver(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        try:
            await asyncio.wrap_future(_WRITER.submit(Delivery(self, owner, items)))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES):
                raise TemporaryFailure(f"maildir {self.mailbox(owner)}: {exc.strerror}") from exc
            raise

    def file_name(self, message: Message) -> str:
        return f"{int(message.entry.received_at)}.M{message.id}.{self._host}"

    def prepare(self, box: Path) -> None:
        if box not in self._ready:
            for sub in _SUBDIRS:
                (box / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            self._ready.add(box)

    def forget(self, box: Path) -> None:
        """Someone removed the mailbox since we made it: the next delivery makes it again."""
        self._ready.discard(box)


@dataclass
class Delivery:
    """One hand-off to one mailbox, and its files while its group is being written."""

    deliverer: MaildirDeliverer
    owner: Agent
    items: Sequence[tuple[Message, bytes]]
    names: list[str] = field(default_factory=list)  # written to tmp/, to be renamed into new/
    descriptors: list[int] = field(default_factory=list)
    error: OSError | None = None

    @property
    def box(self) -> Path:
        return self.deliverer.mailbox(self.owner)

    def write(self) -> None:
        """Each file not delivered before, written to tmp/ (not yet synced); the mailbox is made
        again, once, if someone removed it."""
        try:
            self._write()
        except FileNotFoundError:
            self.close()
            self.names.clear()
            self.deliverer.forget(self.box)
            self._write()

    def _write(self) -> None:
        box = self.box
        self.deliverer.prepare(box)
        for message, content in self.items:
            name = self.deliverer.file_name(message)
            if not _already_delivered(box, name, message.entry.recovered):
                self.descriptors.append(_write_unsynced(box / "tmp" / name, message, content))
                self.names.append(name)

    def sync(self) -> None:
        for fd in self.descriptors:
            os.fsync(fd)

    def rename(self) -> None:
        box = self.box
        for name in self.names:
            os.rename(box / "tmp" / name, box / "new" / name)

    def close(self) -> None:
        for fd in self.descriptors:
            os.close(fd)
        self.descriptors.clear()


def write_group(deliveries: Sequence[Delivery]) -> list[Path]:
    """Writes every delivery's files, fsyncs each, renames them into ``new/``, then fsyncs each
    mailbox's ``new/`` once; a delivery's failure is in its ``error``. Returns the directories
    fsync'ed, once each."""
    for step in (Delivery.write, Delivery.sync, Delivery.rename):
        for delivery in deliveries:
            if delivery.error is None:
                try:
                    step(delivery)
                except OSError as exc:
                    delivery.error = exc
    for delivery in deliveries:
        delivery.close()
    synced = []
    # Every mailbox a delivery succeeded in, even with nothing new: a retry after a failed
    # directory fsync finds its files in new/ and must not be acknowledged before they are durable.
    for directory in dict.fromkeys(d.box / "new" for d in deliveries if d.error is None):
        try:
            _fsync_dir(directory)
        except OSError as exc:
            for delivery in deliveries:
                if delivery.error is None and delivery.box / "new" == directory:
                    delivery.error = exc
        synced.append(directory)
    return synced


class _Writer:
    """The one thread doing every Maildir delivery's file work, a group at a time; shared by
    every ``MaildirDeliverer`` (a reload builds new ones), started at the first delivery."""

    def __init__(self) -> None:
        self._waiting: queue.SimpleQueue[tuple[Delivery, concurrent.futures.Future[None]]] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None
        self.groups = 0
        self.deliveries = 0

    def submit(self, delivery: Delivery) -> concurrent.futures.Future[None]:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._waiting.put((delivery, done))
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="maildir", daemon=True)
                self._thread.start()
        return done

    def _run(self) -> None:
        while True:
            group = [self._waiting.get()]
            while len(group) < _MAX_GROUP:
                try:
                    group.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            # A delivery whose caller gave up (shutdown) before the group started is not written.
            started = [(delivery, done) for delivery, done in group if done.set_running_or_notify_cancel()]
            self.groups += 1
            self.deliveries += len(started)
            try:
                write_group([delivery for delivery, _ in started])
            except Exception as exc:  # a bug, not a disk: every caller hears of it, the thread lives on
                for delivery, done in started:
                    delivery.close()
                    done.set_exception(exc)
                continue
            for delivery, done in started:
                if delivery.error is None:
                    done.set_result(None)
                else:
                    done.set_exception(delivery.error)


_WRITER = _Writer()


def _already_delivered(box: Path, name: str, recovered: bool) -> bool:
    if (box / "new" / name).exists():
        return True
    if not recovered:
        return False
    # Only after a crash: a full listing of cur/ is too slow for every message.
    prefix = name + ":"
    with os.scandir(box / "cur") as found:
        return any(entry.name == name or entry.name.startswith(prefix) for entry in found)


def unix_lines(content: bytes) -> bytes:
    """The message with each CRLF turned into LF; a lone CR or LF stays as it was."""
    return content.replace(b"\r\n", b"\n")


def _write_unsynced(path: Path, message: Message, content: bytes) -> int:
    """The file written in full; returns it still open, for its group's fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"Return-Path: <{message.entry.envelope.mail_from}>\n".encode("utf-8", "replace"))
        view = memoryview(unix_lines(content))
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
