"""Maildir deliveries share their directory fsyncs: each delivery's files are written, fsync'ed
and renamed by the delivery itself, and every mailbox's new/ is fsync'ed once for all the
deliveries waiting at that moment, before any of them returns."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailpipe.config import Agent
from mailpipe.deliver.maildir import MaildirDeliverer, sync_directories
from mailpipe.spool import Entry, Envelope, Message

YAMADA = Agent("yamada", "山田 太郎", "yamada@example.test")
SMITH = Agent("smith", "John Smith", "smith@example.test")
ENVELOPE = Envelope("customer@example.org", ("support@example.test",), "127.0.0.1", "client", "inbound")


def message(qid: str, claims: int = 1) -> Message:
    entry = Entry(qid, "active", ENVELOPE, 1_700_000_000.0, 10, 0, 0, claims, 0.0, "")
    return Message(entry, f"Subject: {qid}\r\n\r\nbody\r\n".encode())


def test_a_round_fsyncs_each_directory_once_however_many_deliveries_wait_on_it(tmp_path: Path) -> None:
    yamada, smith = tmp_path / "yamada" / "new", tmp_path / "smith" / "new"
    yamada.mkdir(parents=True)
    smith.mkdir(parents=True)
    outcomes = sync_directories([yamada, smith, yamada, yamada, smith])
    assert outcomes == {yamada: None, smith: None}


def test_a_directory_that_cannot_be_fsynced_fails_only_the_deliveries_waiting_on_it(tmp_path: Path) -> None:
    present, missing = tmp_path / "yamada" / "new", tmp_path / "gone" / "new"
    present.mkdir(parents=True)
    outcomes = sync_directories([present, missing])
    assert outcomes[present] is None
    assert isinstance(outcomes[missing], FileNotFoundError)


def test_concurrent_deliveries_to_two_mailboxes_each_land_once(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)

    async def deliver_all() -> None:
        await asyncio.gather(*(deliverer.deliver(YAMADA if n % 2 else SMITH, [(message(f"Q{n}"), b"x")])
                               for n in range(40)))

    asyncio.run(deliver_all())
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 20
    assert len(list((tmp_path / "smith" / "new").iterdir())) == 20
    assert list((tmp_path / "yamada" / "tmp").iterdir()) == list((tmp_path / "smith" / "tmp").iterdir()) == []

