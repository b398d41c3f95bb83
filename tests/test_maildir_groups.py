"""Maildir deliveries made durable together: every file fsync'ed before its rename, one
directory fsync per mailbox for all the deliveries waiting at once, and each delivery's
failure its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailpipe.config import Agent
from mailpipe.deliver.maildir import Delivery, MaildirDeliverer, write_group
from mailpipe.spool import Entry, Envelope, Message

YAMADA = Agent("yamada", "山田 太郎", "yamada@example.test")
SMITH = Agent("smith", "John Smith", "smith@example.test")
ENVELOPE = Envelope("customer@example.org", ("support@example.test",), "127.0.0.1", "client", "inbound")


def message(qid: str, claims: int = 1) -> Message:
    entry = Entry(qid, "active", ENVELOPE, 1_700_000_000.0, 10, 0, 0, claims, 0.0, "")
    return Message(entry, f"Subject: {qid}\r\n\r\nbody\r\n".encode())


def delivery(deliverer: MaildirDeliverer, owner: Agent, qid: str, claims: int = 1) -> Delivery:
    spooled = message(qid, claims)
    return Delivery(deliverer, owner, [(spooled, spooled.data)])


def test_a_group_fsyncs_each_mailbox_directory_once_for_all_its_deliveries(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)
    group = [delivery(deliverer, YAMADA, f"Y{n}") for n in range(3)] + [delivery(deliverer, SMITH, f"S{n}")
                                                                        for n in range(2)]
    synced = write_group(group)
    assert synced == [tmp_path / "yamada" / "new", tmp_path / "smith" / "new"]
    assert [d.error for d in group] == [None] * 5
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 3
    assert len(list((tmp_path / "smith" / "new").iterdir())) == 2
    assert list((tmp_path / "yamada" / "tmp").iterdir()) == list((tmp_path / "smith" / "tmp").iterdir()) == []


def test_a_delivery_whose_mailbox_cannot_be_made_fails_alone_in_its_group(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)
    (tmp_path / "smith").write_bytes(b"a file where the mailbox should be")
    group = [delivery(deliverer, YAMADA, "Y1"), delivery(deliverer, SMITH, "S1"), delivery(deliverer, YAMADA, "Y2")]
    synced = write_group(group)
    assert isinstance(group[1].error, OSError)
    assert group[0].error is None and group[2].error is None
    assert synced == [tmp_path / "yamada" / "new"]
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 2


def test_a_message_found_already_delivered_still_has_its_mailbox_directory_fsynced(tmp_path: Path) -> None:
    """A retry after a failed directory fsync finds its file in new/: it is acknowledged only
    once that directory has been fsync'ed again."""
    deliverer = MaildirDeliverer(tmp_path)
    write_group([delivery(deliverer, YAMADA, "Q1")])
    again = delivery(deliverer, YAMADA, "Q1", claims=2)
    assert write_group([again]) == [tmp_path / "yamada" / "new"]
    assert again.names == [] and again.error is None
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 1


def test_concurrent_deliveries_each_land_once(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)

    async def deliver_all() -> None:
        await asyncio.gather(*(deliverer.deliver(YAMADA if n % 2 else SMITH, [(message(f"Q{n}"), b"x")])
                               for n in range(40)))

    asyncio.run(deliver_all())
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 20
    assert len(list((tmp_path / "smith" / "new").iterdir())) == 20
    assert list((tmp_path / "yamada" / "tmp").iterdir()) == []
