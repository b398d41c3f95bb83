"""The desk queue's stages on a real store: which case each command of a mail acts on, and who
is told."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from mailpipe.config import Agent
from mailpipe.desk.commands import Commands
from mailpipe.desk.route import Desk, DeskWork
from mailpipe.metrics import Metrics
from mailpipe.spool import Entry, Envelope, Message
from mailpipe.store.sqlite import SQLiteStore
from tests.test_store import record

AGENTS = (Agent("yamada", "Yamada", "yamada@example.test", "03-1"),
          Agent("smith", "Smith", "smith@example.test", "03-2"),
          Agent("sato", "Sato", "sato@example.test", "03-3", tier="tech"),
          Agent("suzuki", "Suzuki", "suzuki@example.test", "03-4", tier="tech"))


class Mailboxes:
    method = "maildir"

    def __init__(self) -> None:
        self.notes: dict[str, list[bytes]] = {}

    async def deliver(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        self.notes.setdefault(owner.id, []).extend(data for _, data in items)


@pytest.fixture
def desk(tmp_path: Path):
    store = SQLiteStore(tmp_path / "store.sqlite")
    record(store, "Q1", owner="yamada", address="one@example.org")
    record(store, "Q2", owner="smith", address="two@example.org", at=1100.0)
    mailboxes = Mailboxes()
    yield Desk(AGENTS, frozenset({"example.test"}), store, Commands(store, Metrics(), lambda: None, agents=AGENTS),
               mailboxes, "desk.example.test"), store, mailboxes
    store.close()


def command_mail(queue_id: str, *rcpt_tos: str, subject: str = "phone call") -> Message:
    envelope = Envelope("yamada@example.test", rcpt_tos, "127.0.0.1", "client", "submission", submitter="yamada")
    data = f"From: yamada@example.test\r\nSubject: {subject}\r\nMessage-ID: <{queue_id}@x>\r\n\r\nnoted\r\n".encode()
    return Message(Entry(queue_id, "active", envelope, 2000.0, len(data), 0, 0, 1, 0.0, ""), data)


def run(desk: Desk, message: Message) -> DeskWork:
    """The queue's stages and hand-off for one command mail, as the worker runs them."""
    async def stages() -> DeskWork:
        work = DeskWork(message)
        for _, stage in desk.stages:
            result = stage(work)
            work = await result if asyncio.iscoroutine(result) else result
        await desk.hand_off(work)
        return work
    return asyncio.run(stages())


def test_each_command_of_one_mail_acts_on_the_case_its_address_names(desk) -> None:
    route, store, _ = desk
    work = run(route, command_mail("C1", "close+1@example.test", "close+2@example.test"))
    assert [request.case.id for request in work.requests] == [1, 2]
    assert store.case(1).status == "closed" and store.case(2).status == "closed"


def test_the_owner_of_every_case_a_mail_acts_on_is_told(desk) -> None:
    route, _, mailboxes = desk
    run(route, command_mail("C1", "note+1@example.test", "note+2@example.test"))
    assert set(mailboxes.notes) == {"yamada", "smith"}


def test_a_command_for_a_case_that_does_not_exist_says_so(desk) -> None:
    route, store, mailboxes = desk
    work = run(route, command_mail("C1", "close+999@example.test", "close+1@example.test"))
    assert "No case #999" in work.problem and store.case(1).status != "closed"
    assert b"No case #999" in mailboxes.notes["yamada"][0]


def test_assigning_to_a_tier_its_owner_belongs_to_leaves_the_case_where_it_is(desk) -> None:
    route, store, _ = desk
    run(route, command_mail("C1", "assign+1+tech@example.test"))
    first = store.case(1).owner
    work = run(route, command_mail("C2", "assign+1+tech@example.test"))
    assert first in ("sato", "suzuki") and store.case(1).owner == first
    assert "already belongs to" in work.outcomes[0].note


def test_an_assignment_run_again_after_a_later_one_names_the_owner_now(desk) -> None:
    route, store, _ = desk
    run(route, command_mail("C1", "assign+1+tech@example.test"))
    run(route, command_mail("C2", "assign+1+smith@example.test"))
    again = run(route, command_mail("C1", "assign+1+tech@example.test"))
    assert store.case(1).owner == "smith" and "now belongs to smith" in again.outcomes[0].note


def test_a_command_without_a_number_acts_on_the_one_case_the_others_name(desk) -> None:
    route, store, _ = desk
    work = run(route, command_mail("C1", "note+1@example.test", "urgency+high@example.test"))
    assert [request.case.id for request in work.requests] == [1, 1] and store.case(1).level == "high"
