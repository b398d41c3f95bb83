"""Maildir delivery, exactly once per queue id.

The file name is derived from the queue id, not made unique per attempt, so a message that is
delivered again after a crash (delivered, but the spool never heard) finds its earlier copy in
``new/`` or, once the agent's client has seen it, in ``cur/`` with flags, and is not written
twice. Write to ``tmp/``, fsync, rename into ``new/``, fsync the directory: the order the
Maildir specification and a crash both require.

The directory fsync is shared, the way the spool's committer shares a commit: each delivery
writes, fsyncs and renames its files in a thread of its own (concurrent fsyncs of files share
the file system's journal commits), then asks for ``new/`` to be fsync'ed (``DirectorySync``): the
first to ask fsyncs it for every delivery that renamed into it before the fsync began, and those
that arrive meanwhile share the next one. A delivery returns only after an fsync that covers its
rename, so the spool acknowledges a message only once its files are durable; one that finds its
files already in ``new/`` (a retry) waits for an fsync too, in case the one before failed.

A Maildir file holds a message in the local text convention, lines ending in LF, as Postfix's
``local`` and Dovecot's LDA write it: mail clients reading the file (mutt, Thunderbird's Maildir
store) show a CRLF file with ``^M`` on every line. Only the line endings change (``unix_lines``):
the bytes of every line stay as received, so DKIM signatures still verify (verifiers and IMAP
servers put the CRLF back, RFC 5322 section 2.3).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailpipe.config import Agent
from mailpipe.deliver import TemporaryFailure
from mailpipe.spool import Message

_SUBDIRS = ("tmp", "new", "cur")


@dataclass(frozen=True)
class _Mailbox:
    """A mailbox made ready (its directories created), with the paths every delivery to it uses,
    built once: joining paths was a third of a delivery's CPU."""

    tmp: Path
    new: Path
    cur: Path
    synced: DirectorySync  # new/'s shared fsync (``_DIRECTORIES``)


class MaildirDeliverer:
    method = "maildir"

    def __init__(self, root: Path):
        self.root = root
        self._ready: dict[str, _Mailbox] = {}  # by agent id
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def mailbox(self, owner: Agent) -> Path:
        return self.root / owner.id

    async def deliver(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        try:
            await asyncio.to_thread(self._write_creating_mailbox, owner, items)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES):
                raise TemporaryFailure(f"maildir {self.mailbox(owner)}: {exc.strerror}") from exc
            raise

    def _write_creating_mailbox(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        try:
            self._write(owner, items)
        except FileNotFoundError:
            # Someone removed the mailbox since we created it: create it again, once.
            self._ready.pop(owner.id, None)
            self._write(owner, items)

    def _write(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        """Every file written and fsync'ed in tmp/, then renamed into new/, then new/ fsync'ed
        (together with every other delivery's waiting at that moment)."""
        box = self._ready.get(owner.id)
        if box is None:
            path = self.mailbox(owner)
            for sub in _SUBDIRS:
                (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            box = _Mailbox(path / "tmp", path / "new", path / "cur", _DIRECTORIES[path / "new"])
            self._ready[owner.id] = box
        names = []
        for message, content in items:
            name = f"{int(message.entry.received_at)}.M{message.id}.{self._host}"
            if not self._already_delivered(box, name, message.entry.recovered):
                _write_synced(box.tmp / name, message, content)
                names.append(name)
        for name in names:
            os.rename(box.tmp / name, box.new / name)
        box.synced.sync()

    @staticmethod
    def _already_delivered(box: _Mailbox, name: str, recovered: bool) -> bool:
        if (box.new / name).exists():
            return True
        if not recovered:
            return False
        # Only after a crash: a full listing of cur/ is too slow for every message.
        prefix = name + ":"
        with os.scandir(box.cur) as found:
            return any(entry.name == name or entry.name.startswith(prefix) for entry in found)


class DirectorySync:
    """Group commit of one directory's fsync: whoever finds none running fsyncs for every delivery
    that renamed into the directory before it began; those arriving meanwhile wait for the next."""

    def __init__(self, path: Path):
        self.path = path
        self._changed = threading.Condition()
        self._renamed = 0  # tickets handed out: one per delivery that renamed files in
        self._durable = 0  # every ticket up to this one is covered by a finished fsync
        self._syncing = False
        self._failed: tuple[int, OSError] | None = None  # tickets above _durable up to this one: failed
        self.fsyncs = 0

    def sync(self) -> None:
        """Returns once an fsync begun after this call has finished; raises what it raised."""
        with self._changed:
            self._renamed += 1
            ticket = self._renamed
            while self._durable < ticket:
                if self._failed is not None and ticket <= self._failed[0]:
                    raise self._failed[1]
                if self._syncing:
                    self._changed.wait()
                    continue
                self._syncing, covers = True, self._renamed
                self._changed.release()
                try:
                    _fsync_dir(self.path)
                    error = None
                except OSError as exc:
                    error = exc
                finally:
                    self._changed.acquire()
                    self._syncing = False
                    self.fsyncs += 1
                    self._changed.notify_all()
                if error is None:
                    self._durable, self._failed = covers, None
                else:
                    self._failed = (covers, error)


class _Directories:
    """Each mailbox's ``new/`` as a ``DirectorySync``, shared by every ``MaildirDeliverer`` (a reload
    builds new ones)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[Path, DirectorySync] = {}

    def __getitem__(self, path: Path) -> DirectorySync:
        with self._lock:
            return self._known.setdefault(path, DirectorySync(path))


_DIRECTORIES = _Directories()


def unix_lines(content: bytes) -> bytes:
    """The message with each CRLF turned into LF; a lone CR or LF stays as it was."""
    return content.replace(b"\r\n", b"\n")


def _write_synced(path: Path, message: Message, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        # One buffer, one write: each system call in this thread hands the GIL back and forth.
        return_path = f"Return-Path: <{message.entry.envelope.mail_from}>\n".encode("utf-8", "replace")
        view = memoryview(return_path + unix_lines(content))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
