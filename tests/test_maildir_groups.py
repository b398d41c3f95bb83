"""Maildir deliveries are written in groups: every delivery waiting when a group begins has its
files written, fsync'ed and renamed with the others', and each mailbox's new/ is fsync'ed once for
the whole group; a delivery that fails, fails alone."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from mailpipe.config import Agent
from mailpipe.deliver import TemporaryFailure, maildir
from mailpipe.deliver.maildir import MaildirDeliverer
from mailpipe.spool import Entry, Envelope, Message

YAMADA = Agent("yamada", "山田 太郎", "yamada@example.test")
SMITH = Agent("smith", "John Smith", "smith@example.test")
ENVELOPE = Envelope("customer@example.org", ("support@example.test",), "127.0.0.1", "client", "inbound")


def message(qid: str) -> Message:
    entry = Entry(qid, "active", ENVELOPE, 1_700_000_000.0, 10, 0, 0, 1, 0.0, "")
    return Message(entry, f"Subject: {qid}\r\n\r\nbody\r\n".encode())


async def _in_one_group(deliveries: list[tuple[MaildirDeliverer, Agent, str]],
                        writer: maildir._GroupWriter) -> list[BaseException | None]:
    """``deliveries`` written by ``writer`` as one group, in this thread; what each raised."""
    loop = asyncio.get_running_loop()
    group = [maildir._Delivery(deliverer, owner, [(message(qid), b"x")], loop.create_future())
             for deliverer, owner, qid in deliveries]
    writer.write(group)
    outcomes = await asyncio.gather(*(delivery.done for delivery in group), return_exceptions=True)
    return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]


def test_a_group_fsyncs_each_mailbox_directory_once(tmp_path: Path) -> None:
    deliverer, writer = MaildirDeliverer(tmp_path), maildir._GroupWriter("test")
    outcomes = asyncio.run(_in_one_group([(deliverer, YAMADA if n % 2 else SMITH, f"Q{n}") for n in range(6)], writer))
    assert outcomes == [None] * 6
    assert writer.directory_fsyncs == 2
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == len(list((tmp_path / "smith" / "new").iterdir())) == 3


def test_a_delivery_whose_file_cannot_be_synced_fails_alone_and_leaves_nothing_in_tmp(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    deliverer, writer = MaildirDeliverer(tmp_path), maildir._GroupWriter("test")
    real_fsync = os.fsync

    def failing_for_q2(fd: int) -> None:
        if ".MQ2." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(maildir.os, "fsync", failing_for_q2)
    outcomes = asyncio.run(_in_one_group([(deliverer, YAMADA, "Q1"), (deliverer, YAMADA, "Q2")], writer))
    assert outcomes[0] is None and isinstance(outcomes[1], OSError)
    assert [path.name.split(".")[1] for path in (tmp_path / "yamada" / "new").iterdir()] == ["MQ1"]
    assert list((tmp_path / "yamada" / "tmp").iterdir()) == []


def test_a_file_that_cannot_be_written_in_full_is_removed_from_tmp(tmp_path: Path, monkeypatch) -> None:
    deliverer, writer = MaildirDeliverer(tmp_path), maildir._GroupWriter("test")
    real_write = os.write

    def disk_full_for_q2(fd: int, data) -> int:
        if ".MQ2." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(maildir.os, "write", disk_full_for_q2)
    outcomes = asyncio.run(_in_one_group([(deliverer, YAMADA, "Q1"), (deliverer, YAMADA, "Q2")], writer))
    monkeypatch.setattr(maildir.os, "write", real_write)
    assert outcomes[0] is None and isinstance(outcomes[1], OSError)
    assert list((tmp_path / "yamada" / "tmp").iterdir()) == []


def test_a_failed_directory_fsync_fails_its_deliveries_and_a_retry_lands_once(tmp_path: Path, monkeypatch) -> None:
    deliverer, writer = MaildirDeliverer(tmp_path), maildir._GroupWriter("test")
    real_fsync = maildir._fsync_dir

    def failing(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(maildir, "_fsync_dir", failing)
    failed = asyncio.run(_in_one_group([(deliverer, YAMADA, "Q1")], writer))
    assert isinstance(failed[0], OSError) and list((tmp_path / "yamada" / "tmp").iterdir()) == []
    monkeypatch.setattr(maildir, "_fsync_dir", real_fsync)
    assert asyncio.run(_in_one_group([(deliverer, YAMADA, "Q1")], writer)) == [None]
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 1
    assert writer.directory_fsyncs == 2  # the retry found its file in new/ and waited for an fsync too


def test_a_disk_error_is_a_temporary_failure_naming_the_mailbox(tmp_path: Path, monkeypatch) -> None:
    def failing(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(maildir, "_fsync_dir", failing)
    with pytest.raises(TemporaryFailure, match="yamada: No space left on device"):
        asyncio.run(MaildirDeliverer(tmp_path).deliver(YAMADA, [(message("Q1"), b"x")]))


def test_concurrent_deliveries_to_two_mailboxes_each_land_once(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)

    async def deliver_all() -> None:
        await asyncio.gather(*(deliverer.deliver(YAMADA if n % 2 else SMITH, [(message(f"Q{n}"), b"x")])
                               for n in range(40)))

    asyncio.run(deliver_all())
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 20
    assert len(list((tmp_path / "smith" / "new").iterdir())) == 20
    assert list((tmp_path / "yamada" / "tmp").iterdir()) == list((tmp_path / "smith" / "tmp").iterdir()) == []
