"""release+N@ against a real store and submission spool file: what each run of it answers.

The mail round trip (held note, release by mail, the reply at the MX) is tested in
test_reply_fates; here, the command run again before the submission worker took the reply up."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from mailpipe import spool
from mailpipe.desk.addresses import Command
from mailpipe.desk.outcome import Outcome, Request
from mailpipe.desk.replies import ReplyCommands
from mailpipe.store.sqlite import SQLiteStore
from tests.test_store import record
from tests.test_urgency_command import YAMADA

REPLY = "R1.0"


@pytest.fixture
def commands(tmp_path: Path):
    """Case 1 with one reply the double-reply guard held, parked in the submission spool."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    record(store, "Q1")
    store.record_reply(queue_id=REPLY, case_id=1, agent="yamada", message_id="r1@x", answers="Q1@x", subject="s",
                       at=1100.0, fate="held", detail="double reply")
    spool_file = tmp_path / "outbound.sqlite"
    envelope = spool.Envelope("yamada@example.test", ("c@example.org",), "127.0.0.1", "desk", "submission", "yamada")
    with closing(spool.connect(spool_file)) as conn:
        spool.insert(conn, REPLY, envelope, b"Subject: s\r\n\r\nthe reply\r\n", 1100.0)
        spool.hold(conn, REPLY)
    yield ReplyCommands(store, spool_file), spool_file
    store.close()


def release(commands: ReplyCommands, queue_id: str) -> Outcome:
    command = Command("release", ("1",), "release+1@example.test")
    return commands.release(Request(command, YAMADA, commands.store.case(1), "", queue_id, 2000.0))


def test_a_held_reply_is_released_by_its_case_number(commands) -> None:
    replies, spool_file = commands
    assert "1 held reply released by yamada" in release(replies, "C1.0").note
    with closing(spool.connect(spool_file)) as conn:
        (entry,) = spool.entries(conn, [REPLY])
    assert entry.state == "incoming" and entry.overridden


def test_the_command_run_again_before_the_reply_is_sent_says_it_is_on_its_way(commands) -> None:
    replies, _ = commands
    release(replies, "C1.0")
    assert "released already and is on its way" in release(replies, "C1.0").note


def test_a_case_without_a_held_reply_says_so(commands) -> None:
    replies, spool_file = commands
    with closing(spool.connect(spool_file)) as conn:
        spool.remove(conn, REPLY)
    assert "has no held reply" in release(replies, "C1.0").note
