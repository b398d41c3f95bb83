"""The spool: durability, claiming, retry bookkeeping, operator actions, recovery."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from mailpipe import spool
from mailpipe.spool import Envelope, Spool

ENVELOPE = Envelope("customer@example.org", ("support@example.test",), "127.0.0.1", "client", "inbound")


def run(coroutine):
    return asyncio.run(coroutine)


async def with_spool(path: Path, body):
    queue = Spool(path)
    try:
        return await body(queue)
    finally:
        queue.close()


def fresh_entries(path: Path) -> list[spool.Entry]:
    """What a new process (the CLI, the daemon after a crash) sees."""
    with closing(sqlite3.connect(path)) as conn:
        return spool.entries(conn)


def test_an_enqueued_message_is_visible_to_another_connection_once_enqueue_returns(tmp_path: Path) -> None:
    path = tmp_path / "inbound.sqlite"
    qid = run(with_spool(path, lambda q: q.enqueue(ENVELOPE, b"Subject: x\r\n\r\nbody\r\n")))
    (entry,) = fresh_entries(path)
    assert entry.id == qid
    assert entry.state == "incoming"
    assert entry.envelope == ENVELOPE
    with closing(sqlite3.connect(path)) as conn:
        assert spool.body(conn, qid) == b"Subject: x\r\n\r\nbody\r\n"


def test_the_spool_runs_in_wal_mode_with_full_synchronous_commits(tmp_path: Path) -> None:
    conn = spool.connect(tmp_path / "s.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_concurrent_enqueues_share_commits(tmp_path: Path) -> None:
    async def body(queue: Spool):
        ids = await asyncio.gather(*(queue.enqueue(ENVELOPE, b"x" * 5000) for _ in range(200)))
        return ids, queue.commit_groups

    ids, (commits, operations) = run(with_spool(tmp_path / "s.sqlite", body))
    assert len(set(ids)) == 200
    assert operations == 200
    assert commits < 100


async def held_committer(queue: Spool) -> tuple[asyncio.Future[None], threading.Event]:
    """The committer busy until the returned gate is set: what is submitted meanwhile is one group."""
    entered, gate = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    held = queue._committer.submit(hold)
    await asyncio.to_thread(entered.wait, 10)
    return held, gate


class Aborted(BaseException):
    """Not an Exception: what a library's own base class or SystemExit looks like to the committer."""


@pytest.mark.parametrize("error", [ValueError("refused"), Aborted()], ids=["exception", "base exception"])
def test_an_operation_that_fails_is_undone_alone_and_the_rest_of_its_group_commits(tmp_path: Path,
                                                                                   error: BaseException) -> None:
    path = tmp_path / "s.sqlite"

    def failing(conn: sqlite3.Connection) -> None:
        spool.insert(conn, "PARTIAL", ENVELOPE, b"half written", 0.0)
        raise error

    async def body(queue: Spool):
        held, gate = await held_committer(queue)
        group = [queue.enqueue(ENVELOPE, b"one"), queue._committer.submit(failing), queue.enqueue(ENVELOPE, b"two")]
        tasks = [asyncio.ensure_future(operation) for operation in group]
        await asyncio.sleep(0)
        gate.set()
        await held
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return outcomes, queue.commit_groups, await asyncio.wait_for(queue.enqueue(ENVELOPE, b"after"), 60)

    (first, refused, second), (commits, _), after = run(with_spool(path, body))
    assert refused is error
    assert commits == 2
    assert sorted(entry.id for entry in fresh_entries(path)) == sorted([first, second, after])


def test_a_hand_off_whose_group_is_run_again_keeps_its_successors_from_an_iterator(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    def failing(conn: sqlite3.Connection) -> None:
        raise ValueError("refused")

    async def body(queue: Spool):
        await queue.enqueue(ENVELOPE, b"reply", queue_id="R1")
        held, gate = await held_committer(queue)
        successors = ((f"R1-{n}", ENVELOPE, b"reply") for n in range(2))  # replace takes any iterable
        handed = asyncio.ensure_future(queue.replace("R1", successors))
        await asyncio.sleep(0)  # its operation is queued first, then the one that fails: one group
        refused = queue._committer.submit(failing)
        gate.set()
        await held
        return await asyncio.gather(handed, refused, return_exceptions=True)

    handed, refused = run(with_spool(path, body))
    assert handed is None and isinstance(refused, ValueError)
    assert sorted(entry.id for entry in fresh_entries(path)) == ["R1-0", "R1-1"]


def test_the_committer_outlives_a_caller_whose_event_loop_closed_before_its_answer(tmp_path: Path) -> None:
    queue = Spool(tmp_path / "s.sqlite")

    async def abandoned() -> threading.Event:
        _, gate = await held_committer(queue)
        queue._committer.submit(lambda conn: None)  # answered after this loop is gone
        return gate

    try:
        run(abandoned()).set()
        later = run(asyncio.wait_for(queue.enqueue(ENVELOPE, b"after"), 60))
        assert later in {entry.id for entry in fresh_entries(tmp_path / "s.sqlite")}
        assert queue._committer.alive
    finally:
        queue.close()


def test_queue_ids_are_unique_and_sort_by_arrival() -> None:
    ids = [spool.new_queue_id(1_700_000_000 + i) for i in range(100)]
    assert ids == sorted(ids)
    assert len({spool.new_queue_id(1_700_000_000) for _ in range(1000)}) == 1000
    assert all(len(i) == 16 and i.isalnum() for i in ids)


def test_a_claimed_message_is_not_claimed_again(tmp_path: Path) -> None:
    async def body(queue: Spool):
        await queue.enqueue(ENVELOPE, b"one")
        first = await queue.claim(10)
        second = await queue.claim(10)
        return first, second

    first, second = run(with_spool(tmp_path / "s.sqlite", body))
    assert [m.data for m in first] == [b"one"]
    assert first[0].entry.state == "active" and first[0].entry.claims == 1
    assert second == []


def claim_steps(path: Path, queued: int) -> int:
    """SQLite's virtual machine steps (in hundreds) that claiming 8 of ``queued`` due messages takes."""
    conn = spool.connect(path)
    with conn:
        for n in range(queued):
            spool.insert(conn, spool.new_queue_id(), ENVELOPE, b"x" * 5000, 1_700_000_000 + n)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 100)
    with conn:
        assert len(spool.claim(conn, 8, time.time())) == 8
    conn.close()
    return steps[0]


def test_a_claim_reads_the_messages_it_takes_not_the_whole_queue(tmp_path: Path) -> None:
    # A backlog is when claims must stay cheap: a claim that read every queued row made draining
    # a queue of n messages cost n*n/8 row reads.
    shallow, deep = claim_steps(tmp_path / "shallow.sqlite", 16), claim_steps(tmp_path / "deep.sqlite", 4000)
    assert deep < 2 * shallow + 10


def test_ack_removes_the_message(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def body(queue: Spool):
        await queue.enqueue(ENVELOPE, b"one")
        (message,) = await queue.claim(1)
        await queue.ack(message.id)

    run(with_spool(path, body))
    assert fresh_entries(path) == []


def test_a_deferred_message_waits_for_its_next_attempt(tmp_path: Path) -> None:
    clock = [1000.0]
    path = tmp_path / "s.sqlite"

    async def body(queue: Spool):
        await queue.enqueue(ENVELOPE, b"one")
        (message,) = await queue.claim(1)
        await queue.defer(message.id, "451 try later", 60)
        clock[0] += 30
        early = await queue.claim(1)
        clock[0] += 31
        due = await queue.claim(1)
        return early, due

    queue = Spool(path, clock=lambda: clock[0])
    try:
        early, due = asyncio.run(body(queue))
    finally:
        queue.close()
    assert early == []
    assert due[0].entry.attempts == 1
    assert due[0].entry.last_error == "451 try later"


def test_a_stage_failure_is_counted_apart_from_delivery_attempts(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def body(queue: Spool):
        await queue.enqueue(ENVELOPE, b"one")
        (message,) = await queue.claim(1)
        await queue.defer(message.id, "boom", 0, stage_failure=True)

    run(with_spool(path, body))
    (entry,) = fresh_entries(path)
    assert (entry.state, entry.attempts, entry.stage_failures) == ("deferred", 0, 1)


def test_recover_returns_claimed_messages_to_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def crash(queue: Spool):
        await queue.enqueue(ENVELOPE, b"one")
        await queue.claim(1)

    async def restart(queue: Spool):
        recovered = await queue.recover()
        return recovered, await queue.claim(1)

    run(with_spool(path, crash))
    recovered, (message,) = run(with_spool(path, restart))
    assert recovered == 1
    assert message.entry.recovered


def test_quarantined_messages_are_not_claimed_until_released(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def body(queue: Spool):
        await queue.enqueue(ENVELOPE, b"poison")
        (message,) = await queue.claim(1)
        await queue.quarantine(message.id, "stage parse raised ValueError")
        return message.id, await queue.claim(1)

    qid, claimed = run(with_spool(path, body))
    assert claimed == []
    (entry,) = fresh_entries(path)
    assert (entry.state, entry.last_error) == ("quarantine", "stage parse raised ValueError")
    with closing(spool.connect(path)) as conn:
        assert spool.release(conn, qid, 0)
    assert fresh_entries(path)[0].state == "incoming"


def test_hold_parks_a_message_and_release_returns_it(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    qid = run(with_spool(path, lambda q: q.enqueue(ENVELOPE, b"one")))
    with closing(spool.connect(path)) as conn:
        assert spool.hold(conn, qid)
        assert not spool.hold(conn, qid)
        assert spool.entries(conn)[0].state == "hold"
        assert run(with_spool(path, lambda q: q.claim(1))) == []
        assert spool.release(conn, qid, 0)
    assert fresh_entries(path)[0].state == "incoming"


def test_flush_makes_deferred_messages_due_now(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def body(queue: Spool):
        await queue.enqueue(ENVELOPE, b"one")
        (message,) = await queue.claim(1)
        await queue.defer(message.id, "later", 3600)

    run(with_spool(path, body))
    assert run(with_spool(path, lambda q: q.claim(1))) == []
    with closing(spool.connect(path)) as conn:
        assert spool.flush(conn, time.time()) == 1
    assert len(run(with_spool(path, lambda q: q.claim(1)))) == 1


def test_stats_count_messages_by_state_and_age(tmp_path: Path) -> None:
    clock = [1000.0]
    queue = Spool(tmp_path / "s.sqlite", clock=lambda: clock[0])

    async def body():
        await queue.enqueue(ENVELOPE, b"one")
        clock[0] += 5
        await queue.enqueue(ENVELOPE, b"two")
        clock[0] += 5
        return await queue.stats()

    try:
        stats = asyncio.run(body())
    finally:
        queue.close()
    assert stats.depth["incoming"] == 2
    assert stats.oldest_age["incoming"] == pytest.approx(10)


def test_a_second_daemon_cannot_lock_the_same_spool(tmp_path: Path) -> None:
    lock = spool.SpoolLock(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="another mailpipe daemon"):
            spool.SpoolLock(tmp_path)
    finally:
        lock.release()
    spool.SpoolLock(tmp_path).release()


SUBMISSION = Envelope("yamada@example.test", ("customer@example.org",), "127.0.0.1", "client", "submission", "yamada")


def test_queues_sharing_a_file_are_claimed_apart(tmp_path: Path) -> None:
    async def body(queue: Spool):
        await queue.enqueue(SUBMISSION, b"reply")
        await queue.enqueue(ENVELOPE, b"other")
        return await queue.claim(10, "submission")

    (claimed,) = run(with_spool(tmp_path / "outbound.sqlite", body))
    assert claimed.data == b"reply"
    assert claimed.entry.envelope.submitter == "yamada"


def test_replace_hands_a_message_to_the_next_queue_in_one_commit(tmp_path: Path) -> None:
    path = tmp_path / "outbound.sqlite"
    onward = Envelope("yamada@example.test", ("customer@example.org",), "", "", "outbound", "yamada")

    async def body(queue: Spool):
        qid = await queue.enqueue(SUBMISSION, b"reply")
        await queue.claim(10, "submission")
        await queue.replace(qid, [(qid + ".1", onward, b"signed reply")])
        await queue.replace(qid, [(qid + ".1", onward, b"signed again")])  # a repeat after a crash
        return qid

    qid = run(with_spool(path, body))
    (entry,) = fresh_entries(path)
    assert (entry.id, entry.envelope.listener, entry.state) == (qid + ".1", "outbound", "incoming")
    with closing(sqlite3.connect(path)) as conn:
        assert spool.body(conn, entry.id) == b"signed reply"


def test_a_message_a_worker_holds_keeps_its_reason_and_release_marks_it_overridden(tmp_path: Path) -> None:
    path = tmp_path / "outbound.sqlite"

    async def body(queue: Spool):
        qid = await queue.enqueue(SUBMISSION, b"reply")
        await queue.claim(10, "submission")
        await queue.hold(qid, "double reply: smith answered 2 minutes ago")
        return qid

    qid = run(with_spool(path, body))
    (held,) = fresh_entries(path)
    assert (held.state, held.last_error, held.overridden) == ("hold", "double reply: smith answered 2 minutes ago",
                                                              False)
    with closing(spool.connect(path)) as conn:
        assert spool.release(conn, qid, time.time())
    (released,) = fresh_entries(path)
    assert (released.state, released.overridden) == ("incoming", True)


def test_narrow_defers_a_message_for_its_remaining_recipients_only(tmp_path: Path) -> None:
    path = tmp_path / "outbound.sqlite"
    both = Envelope("", ("a@example.org", "b@example.org"), "", "", "outbound")

    async def body(queue: Spool):
        qid = await queue.enqueue(both, b"x")
        await queue.claim(10, "outbound")
        await queue.narrow(qid, ["b@example.org"], "451 4.7.0 try later", 60)

    run(with_spool(path, body))
    (entry,) = fresh_entries(path)
    assert (entry.state, entry.envelope.rcpt_tos, entry.attempts) == ("deferred", ("b@example.org",), 1)
    assert entry.last_error == "451 4.7.0 try later"


def test_a_spool_file_from_before_the_submitter_column_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "inbound.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(spool._SCHEMA.replace("    submitter TEXT NOT NULL DEFAULT '',\n", "")
                           .replace("    overridden INTEGER NOT NULL DEFAULT 0,\n", ""))
        conn.execute("INSERT INTO messages (id, state, listener, mail_from, rcpt_tos, peer, helo, received_at, size,"
                     " next_attempt, data) VALUES ('OLD', 'incoming', 'inbound', 'a@b', '[]', '', '', 0, 1, 0, x'00')")
        conn.commit()
    with closing(spool.connect(path)) as conn:
        (entry,) = spool.entries(conn)
    assert (entry.id, entry.envelope.submitter, entry.overridden) == ("OLD", "", False)


DAMAGE = {  # what a row written or damaged by something other than mailpipe may hold
    "recipients that are no JSON": ("rcpt_tos", "{not json"),
    "recipients that are no list of addresses": ("rcpt_tos", '{"a": 1}'),
    "recipients nested past the recursion limit": ("rcpt_tos", "[" * 100_000),
    "a message stored as a number": ("data", 2**62),
    "a message stored as text": ("data", "Subject: x"),
    "a received time in words": ("received_at", "yesterday"),
}


def damage(path: Path, qid: str, column: str, value: object) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"UPDATE messages SET {column} = ? WHERE id = ?", (value, qid))


@pytest.mark.parametrize("column, value", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_entry_is_quarantined_when_claimed_and_the_rest_are_claimed(tmp_path: Path, column: str,
                                                                               value: object) -> None:
    path = tmp_path / "s.sqlite"

    async def body(queue: Spool):
        damaged = await queue.enqueue(ENVELOPE, b"damaged")
        await queue.enqueue(ENVELOPE, b"whole")
        damage(path, damaged, column, value)
        return damaged, await queue.claim(10), await queue.claim(10)

    damaged, claimed, again = run(with_spool(path, body))
    assert [m.data for m in claimed] == [b"whole"] and again == []
    state = {entry.id: (entry.state, entry.last_error) for entry in fresh_entries(path)}
    assert state[damaged][0] == "quarantine" and state[damaged][1].startswith("unreadable spool entry")


def test_the_claimer_hears_once_of_each_entry_quarantined_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    heard: list[str] = []

    async def body(queue: Spool) -> str:
        damaged = await queue.enqueue(ENVELOPE, b"damaged")
        await queue.enqueue(ENVELOPE, b"whole")
        damage(path, damaged, "rcpt_tos", "{not json")
        await queue.claim(10, quarantined=heard.append)
        await queue.claim(10, quarantined=heard.append)
        return damaged

    assert heard == [run(with_spool(path, body))]


@pytest.mark.parametrize("column, value", DAMAGE.values(), ids=DAMAGE.keys())
def test_listing_shows_a_damaged_entry_with_what_is_wrong(tmp_path: Path, column: str, value: object) -> None:
    path = tmp_path / "s.sqlite"

    async def body(queue: Spool):
        return await queue.enqueue(ENVELOPE, b"damaged"), await queue.enqueue(ENVELOPE, b"whole")

    damaged, whole = run(with_spool(path, body))
    damage(path, damaged, column, value)
    entries = {entry.id: entry for entry in fresh_entries(path)}
    assert entries[whole].envelope == ENVELOPE
    if column != "data":  # listing does not read the message itself
        assert entries[damaged].last_error.startswith("unreadable spool entry")


def test_a_damaged_entry_is_logged_once_with_its_queue_id_and_reason(tmp_path: Path, caplog) -> None:
    path = tmp_path / "s.sqlite"

    async def body(queue: Spool):
        damaged = await queue.enqueue(ENVELOPE, b"damaged")
        damage(path, damaged, "rcpt_tos", "{not json")
        await queue.claim(10)
        return damaged

    with caplog.at_level("ERROR", logger="mailpipe.spool"):
        damaged = run(with_spool(path, body))
    (record,) = [r for r in caplog.records if r.getMessage() == "quarantined"]
    assert record.queue_id == damaged and record.reason.startswith("unreadable spool entry")
