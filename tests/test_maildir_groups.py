"""Maildir deliveries share their directory fsyncs: each delivery writes, fsyncs and renames its
own files, then waits for an fsync of its mailbox's new/ that began after its rename; one fsync
serves every delivery waiting when it begins."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from mailpipe.config import Agent
from mailpipe.deliver import maildir
from mailpipe.deliver.maildir import DirectorySync, MaildirDeliverer
from mailpipe.spool import Entry, Envelope, Message

YAMADA = Agent("yamada", "山田 太郎", "yamada@example.test")
SMITH = Agent("smith", "John Smith", "smith@example.test")
ENVELOPE = Envelope("customer@example.org", ("support@example.test",), "127.0.0.1", "client", "inbound")


def message(qid: str) -> Message:
    entry = Entry(qid, "active", ENVELOPE, 1_700_000_000.0, 10, 0, 0, 1, 0.0, "")
    return Message(entry, f"Subject: {qid}\r\n\r\nbody\r\n".encode())


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_deliveries_waiting_during_an_fsync_share_the_next_one(tmp_path: Path, monkeypatch) -> None:
    release = threading.Event()
    real_fsync = maildir._fsync_dir

    def first_fsync_held(path: Path) -> None:
        release.wait(10)
        real_fsync(path)

    monkeypatch.setattr(maildir, "_fsync_dir", first_fsync_held)
    directory = DirectorySync(tmp_path)
    threads = [threading.Thread(target=directory.sync) for _ in range(5)]
    threads[0].start()
    wait_until(lambda: directory._syncing)
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: directory._renamed == 5)
    release.set()
    for thread in threads:
        thread.join(10)
    assert directory.fsyncs == 2  # the one under way, then one for the four that waited


def test_a_failed_directory_fsync_fails_its_deliveries_and_the_next_one_tries_again(tmp_path: Path) -> None:
    directory = DirectorySync(tmp_path / "new")
    with pytest.raises(FileNotFoundError):
        directory.sync()
    (tmp_path / "new").mkdir()
    directory.sync()
    assert directory.fsyncs == 2


def test_concurrent_deliveries_to_two_mailboxes_each_land_once(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)

    async def deliver_all() -> None:
        await asyncio.gather(*(deliverer.deliver(YAMADA if n % 2 else SMITH, [(message(f"Q{n}"), b"x")])
                               for n in range(40)))

    asyncio.run(deliver_all())
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 20
    assert len(list((tmp_path / "smith" / "new").iterdir())) == 20
    assert list((tmp_path / "yamada" / "tmp").iterdir()) == list((tmp_path / "smith" / "tmp").iterdir()) == []
