"""Maildir delivery, exactly once per queue id.

The file name is derived from the queue id, not made unique per attempt, so a message that is
delivered again after a crash (delivered, but the spool never heard) finds its earlier copy in
``new/`` or, once the agent's client has seen it, in ``cur/`` with flags, and is not written
twice. Write to ``tmp/``, fsync, rename into ``new/``, fsync the directory: the order the
Maildir specification and a crash both require.

Deliveries are written in groups, the way the spool's committer commits (``_GroupWriter``): one
thread takes every delivery waiting at that moment, writes all their files into ``tmp/``, fsyncs
each, renames each into ``new/``, and fsyncs each ``new/`` the group renamed into once. On ext4
(``data=ordered``, its default) the first fsync's journal commit carries the data of the files
written before it, so the rest of the group's fsyncs find little left to do. A delivery returns
only after the fsync of its ``new/``, so the spool acknowledges a message only once its files are
durable; one that finds its files already in ``new/`` (a retry) waits for that fsync too, in case
the one before failed. A delivery whose file cannot be written, fsync'ed or renamed fails alone;
a failed directory fsync fails every delivery of the group that renamed into that directory.
Why one thread: with a thread per delivery (eight slots in flight, on the default executor) the
daemon spent nearly half of its triage CPU in the kernel: creating and renaming files in one
directory from several threads at once spins on its lock, and every thread coming back from its
fsync fought the event loop for the GIL (``bench/drain.py``: 80 thread switches a message, 42
with the group writer, and a third less kernel CPU).

A Maildir file holds a message in the local text convention, lines ending in LF, as Postfix's
``local`` and Dovecot's LDA write it: mail clients reading the file (mutt, Thunderbird's Maildir
store) show a CRLF file with ``^M`` on every line. Only the line endings change (``unix_lines``):
the bytes of every line stay as received, so DKIM signatures still verify (verifiers and IMAP
servers put the CRLF back, RFC 5322 section 2.3).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from mailpipe.offload import settle_from_thread
from mailpipe.spool import Message

_SUBDIRS = ("tmp", "new", "cur")
# Deliveries in one group. Each holds its files open from their write to their fsync: two each as
# triage files them (the original and its card), well inside the default limit of 1,024 descriptors.
_MAX_GROUP = 64


@dataclass(frozen=True)
class _Mailbox:
    """A mailbox made ready (its directories created), with the paths every delivery to it uses,
    built once: joining paths was a third of a delivery's CPU."""

    tmp: Path
    new: Path
    cur: Path


class MaildirDeliverer:
    method = "maildir"

    def __init__(self, root: Path):
        self.root = root
        self._ready: dict[str, _Mailbox] = {}  # by agent id; used by the group writer's thread alone
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def mailbox(self, owner: Agent) -> Path:
        return self.root / owner.id

    async def deliver(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _WRITER.submit(_Delivery(self, owner, items, done))
        try:
            await done
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES):
                raise TemporaryFailure(f"maildir {self.mailbox(owner)}: {exc.strerror}") from exc
            raise

    def ready(self, owner: Agent) -> _Mailbox:
        """The owner's mailbox, its directories created the first time."""
        box = self._ready.get(owner.id)
        if box is None:
            path = self.mailbox(owner)
            for sub in _SUBDIRS:
                (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            box = _Mailbox(path / "tmp", path / "new", path / "cur")
            self._ready[owner.id] = box
        return box

    def forget(self, owner: Agent) -> None:
        """Someone removed the mailbox since we created it: the next delivery creates it again."""
        self._ready.pop(owner.id, None)

    def name(self, message: Message) -> str:
        return f"{int(message.entry.received_at)}.M{message.id}.{self._host}"


@dataclass
class _Delivery:
    """One ``deliver`` call on its way through a group: its files written in ``tmp/`` and still
    open, and the first error that fails it."""

    deliverer: MaildirDeliverer
    owner: Agent
    items: Sequence[tuple[Message, bytes]]
    done: asyncio.Future[None]
    box: _Mailbox | None = None
    written: list[tuple[str, int]] = field(default_factory=list)  # file name in tmp/, its descriptor
    error: BaseException | None = None

    def write(self) -> None:
        """Writes the files not delivered before into ``tmp/``, creating the mailbox once more if
        it was removed since it was created."""
        try:
            self._write()
        except FileNotFoundError:
            self.discard()
            self.deliverer.forget(self.owner)
            self._write()

    def _write(self) -> None:
        box = self.box = self.deliverer.ready(self.owner)
        for message, content in self.items:
            name = self.deliverer.name(message)
            if not _already_delivered(box, name, message.entry.recovered):
                self.written.append((name, _write_unsynced(box.tmp / name, message, content)))

    def sync(self) -> None:
        for _, fd in self.written:
            os.fsync(fd)
        self._close()

    def rename(self) -> None:
        assert self.box is not None
        for name, _ in self.written:
            os.rename(self.box.tmp / name, self.box.new / name)

    def discard(self) -> None:
        """Closes and removes what this delivery left in ``tmp/`` (a file renamed already is gone
        from there; one in ``new/`` is a delivery, which a retry finds)."""
        with contextlib.suppress(OSError):  # the delivery failed already: its first error is the one to tell
            self._close()
        if self.box is not None:
            for name, _ in self.written:
                with contextlib.suppress(OSError):
                    os.unlink(self.box.tmp / name)
        self.written = []

    def _close(self) -> None:
        """Closes the files still open; the first error is raised once all are closed."""
        error: OSError | None = None
        for index, (name, fd) in enumerate(self.written):
            if fd >= 0:
                self.written[index] = (name, -1)
                try:
                    os.close(fd)
                except OSError as exc:
                    error = error or exc
        if error is not None:
            raise error


class _GroupWriter:
    """One thread writing every delivery waiting at that moment as one group (the module's
    docstring says in which order); started on first use, shared by every ``MaildirDeliverer`` (a
    reload builds new ones)."""

    def __init__(self, name: str):
        self._name = name
        self._deliveries: queue.SimpleQueue[_Delivery] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self.directory_fsyncs = 0

    def submit(self, delivery: _Delivery) -> None:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._deliveries.put(delivery)

    def _run(self) -> None:
        while True:
            group = [self._deliveries.get()]
            while len(group) < _MAX_GROUP:
                try:
                    group.append(self._deliveries.get_nowait())
                except queue.Empty:
                    break
            self.write(group)

    def write(self, group: list[_Delivery]) -> None:
        """Writes ``group`` and tells each delivery's caller how it went."""
        for step in (_Delivery.write, _Delivery.sync, _Delivery.rename):
            for delivery in group:
                if delivery.error is None:
                    try:
                        step(delivery)
                    except BaseException as exc:  # the caller's to handle, as in the offload: the thread goes on
                        delivery.error = exc
        renamed: dict[Path, list[_Delivery]] = {}
        for delivery in group:
            if delivery.error is None and delivery.box is not None:
                renamed.setdefault(delivery.box.new, []).append(delivery)
        for directory, deliveries in renamed.items():
            try:
                _fsync_dir(directory)
            except BaseException as exc:
                for delivery in deliveries:
                    delivery.error = exc
            self.directory_fsyncs += 1
        for delivery in group:
            if delivery.error is not None:
                delivery.discard()
        settle_from_thread((delivery.done, None, delivery.error) for delivery in group)


_WRITER = _GroupWriter("maildir")


def _already_delivered(box: _Mailbox, name: str, recovered: bool) -> bool:
    if (box.new / name).exists():
        return True
    if not recovered:
        return False
    # Only after a crash: a full listing of cur/ is too slow for every message.
    prefix = name + ":"
    with os.scandir(box.cur) as found:
        return any(entry.name == name or entry.name.startswith(prefix) for entry in found)


def unix_lines(content: bytes) -> bytes:
    """The message with each CRLF turned into LF; a lone CR or LF stays as it was."""
    return content.replace(b"\r\n", b"\n")


def _write_unsynced(path: Path, message: Message, content: bytes) -> int:
    """The file written, left open for the group's fsync: its descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        # One buffer, one write: each system call in this thread hands the GIL back and forth.
        return_path = f"Return-Path: <{message.entry.envelope.mail_from}>\n".encode("utf-8", "replace")
        view = memoryview(return_path + unix_lines(content))
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
