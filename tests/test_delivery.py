"""Hand-off to the owner's mailbox: Maildir exactly once, SMTP/LMTP relays, retries, quarantine."""

from __future__ import annotations

import asyncio
import json
import shutil
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP

from mailpipe import spool as spool_ops
from mailpipe import worker as worker_module
from mailpipe.config import Agent, SpoolConfig
from mailpipe.deliver.maildir import MaildirDeliverer
from mailpipe.errors import TemporaryFailure
from mailpipe.metrics import Metrics
from mailpipe.spool import Entry, Envelope, Message, Spool
from mailpipe.triage.work import Work
from mailpipe.worker import InThread, Route, Worker
from tests.conftest import Daemon, free_port
from tests.peers import SmtpSink
from tests.test_spool import damage

AGENT = Agent("yamada", "山田 太郎", "yamada@example.test", "03-1234-5678")
ENVELOPE = Envelope("customer@example.org", ("support@example.test",), "127.0.0.1", "client", "inbound")


def send(daemon: Daemon, subject: str = "hello") -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"],
                        f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def queue_list(daemon: Daemon) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "mailpipe", "queue", "list", "--json", "--config",
                             str(daemon.config_path)], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def message(qid: str, claims: int = 1) -> Message:
    entry = Entry(qid, "active", ENVELOPE, 1_700_000_000.0, 10, 0, 0, claims, 0.0, "")
    return Message(entry, b"Subject: x\r\n\r\nbody\r\n")


def test_maildir_delivery_of_a_recovered_message_does_not_write_it_twice(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)
    asyncio.run(deliverer.deliver(AGENT, [(message("Q1"), b"Subject: x\r\n\r\nbody\r\n")]))
    asyncio.run(deliverer.deliver(AGENT, [(message("Q1", claims=2), b"Subject: x\r\n\r\nbody\r\n")]))
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 1
    assert list((tmp_path / "yamada" / "tmp").iterdir()) == []


def test_maildir_delivery_recognises_a_copy_the_agent_has_already_read(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)
    asyncio.run(deliverer.deliver(AGENT, [(message("Q2"), b"x")]))
    (delivered,) = (tmp_path / "yamada" / "new").iterdir()
    delivered.rename(tmp_path / "yamada" / "cur" / (delivered.name + ":2,S"))
    asyncio.run(deliverer.deliver(AGENT, [(message("Q2", claims=2), b"x")]))
    assert list((tmp_path / "yamada" / "new").iterdir()) == []
    assert len(list((tmp_path / "yamada" / "cur").iterdir())) == 1


def test_maildir_files_start_with_return_path_and_keep_every_line_byte_for_byte_ending_in_lf(
        tmp_path: Path) -> None:
    content = b"DKIM-Signature: v=1; a=rsa-sha256;\r\n b=abc\r\nSubject: x\r\n\r\n\xe3\x81\x82 body \r\nlone\rcr\r\n"
    asyncio.run(MaildirDeliverer(tmp_path).deliver(AGENT, [(message("Q3"), content)]))
    (delivered,) = (tmp_path / "yamada" / "new").iterdir()
    assert delivered.read_bytes() == (b"Return-Path: <customer@example.org>\n"
                                      b"DKIM-Signature: v=1; a=rsa-sha256;\n b=abc\nSubject: x\n\n\xe3\x81\x82 body \n"
                                      b"lone\rcr\n")


def test_a_message_that_crashes_a_stage_is_quarantined_and_does_not_block_the_queue(tmp_path: Path) -> None:
    def poison(work: Work) -> Work:
        if b"poison" in work.message.data:
            raise ValueError("cannot parse")
        return work

    async def scenario():
        spool = Spool(tmp_path / "inbound.sqlite")
        settings = SpoolConfig(workers=2, retry_initial=0.05, retry_max=0.1, max_lifetime=60, max_stage_failures=3)
        mailboxes = MaildirDeliverer(tmp_path / "mail")

        async def hand_off(work: Work) -> None:
            await mailboxes.deliver(AGENT, [(work.message, work.message.data)])

        worker = Worker("inbound", spool, Route(Work, (("parse", poison),), hand_off, settings, "maildir"), Metrics())
        runner = asyncio.create_task(worker.run())
        await spool.enqueue(ENVELOPE, b"Subject: poison\r\n\r\npoison\r\n")
        for n in range(5):
            await spool.enqueue(ENVELOPE, f"Subject: good {n}\r\n\r\nfine\r\n".encode())
        for _ in range(200):
            stats = await spool.stats()
            if stats.depth["quarantine"] == 1 and sum(stats.depth.values()) == 1:
                break
            await asyncio.sleep(0.05)
        await worker.stop(5)
        runner.cancel()
        spool.close()
        return stats

    stats = asyncio.run(scenario())
    assert stats.depth["quarantine"] == 1
    assert len(list((tmp_path / "mail" / "yamada" / "new").iterdir())) == 5


def test_a_spooled_message_that_cannot_be_read_is_counted_as_quarantined(tmp_path: Path) -> None:
    async def scenario() -> tuple[float, float]:
        spool = Spool(tmp_path / "inbound.sqlite")
        settings = SpoolConfig(workers=2, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)

        async def hand_off(work: Work) -> None:
            await asyncio.sleep(0)

        metrics = Metrics()
        worker = Worker("inbound", spool, Route(Work, (), hand_off, settings, "maildir"), metrics)
        damaged = await spool.enqueue(ENVELOPE, b"Subject: damaged\r\n\r\nx\r\n")
        await spool.enqueue(ENVELOPE, b"Subject: whole\r\n\r\nx\r\n")
        damage(spool.path, damaged, "rcpt_tos", "{not json")
        runner = asyncio.create_task(worker.run())
        await settled(worker, runner, spool, lambda entries: [entry.state for entry in entries] == ["quarantine"])
        return (metrics.handoffs.labels("inbound", "quarantined")._value.get(),
                metrics.handoffs.labels("inbound", "delivered")._value.get())

    assert asyncio.run(scenario()) == (1, 1)


def test_a_failed_retry_asked_for_by_an_operator_keeps_the_backoff_where_it_was(tmp_path: Path) -> None:
    async def refuse(work: Work) -> None:
        raise TemporaryFailure("451 try later")

    async def scenario() -> list[float]:
        spool = Spool(tmp_path / "inbound.sqlite")
        settings = SpoolConfig(workers=1, retry_initial=100, retry_max=10000, max_lifetime=60, max_stage_failures=3)
        worker = Worker("inbound", spool, Route(Work, (), refuse, settings, "maildir"), Metrics())
        runner = asyncio.create_task(worker.run())
        qid = await spool.enqueue(ENVELOPE, b"Subject: x\r\n\r\nbody\r\n")
        delays = []
        operator = spool_ops.connect(tmp_path / "inbound.sqlite")  # as `mailpipe queue flush` does
        for manual in (False, True):
            for _ in range(200):
                (entry,) = spool_ops.entries(operator, [qid])
                if entry.state == "deferred" and not entry.manual and entry.attempts == 1:
                    break
                await asyncio.sleep(0.05)
            delays.append(entry.next_attempt - time.time())
            if not manual:
                assert spool_ops.flush(operator, time.time()) == 1
                await asyncio.sleep(1.5)  # the worker polls each second
        operator.close()
        await worker.stop(5)
        runner.cancel()
        spool.close()
        return delays

    first, after_flush = asyncio.run(scenario())
    assert 90 < first <= 100
    assert 90 < after_flush <= 100  # not 200: the flushed attempt was not counted


async def settled(worker: Worker, runner: asyncio.Task[None], spool: Spool,
                  done: Callable[[list[spool_ops.Entry]], bool]) -> list[spool_ops.Entry]:
    """The spool's entries once ``done`` says so (or after ten seconds), the worker stopped."""
    operator = spool_ops.connect(spool.path)
    for _ in range(200):
        entries = spool_ops.entries(operator)
        if done(entries):
            break
        await asyncio.sleep(0.05)
    operator.close()
    await worker.stop(5)
    runner.cancel()
    spool.close()
    return entries


def test_a_hand_off_that_moves_the_message_on_is_not_followed_by_an_acknowledgement(tmp_path: Path) -> None:
    """The send queue's hand-off (``Spool.replace``) takes the message out of its queue in the
    same commit that puts it into the next: the worker writes no second commit for it."""
    acknowledged: list[str] = []

    class Recording(Spool):
        async def ack(self, *qids: str) -> None:
            acknowledged.extend(qids)
            await super().ack(*qids)

    async def scenario() -> list[spool_ops.Entry]:
        spool = Recording(tmp_path / "outbound.sqlite")
        settings = SpoolConfig(workers=1, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)

        async def move_on(work: Work) -> None:
            onward = Envelope(ENVELOPE.mail_from, ENVELOPE.rcpt_tos, "", "", "outbound")
            await spool.replace(work.message.id, [(f"{work.message.id}-0", onward, work.message.data)])

        worker = Worker("inbound", spool, Route(Work, (), move_on, settings, "queue", moves_on=True), Metrics())
        runner = asyncio.create_task(worker.run())
        qid = await spool.enqueue(ENVELOPE, b"Subject: x\r\n\r\nbody\r\n")
        return await settled(worker, runner, spool, lambda entries: [entry.id for entry in entries] == [f"{qid}-0"])

    (entry,) = asyncio.run(scenario())
    assert entry.envelope.listener == "outbound" and entry.state == "incoming"
    assert acknowledged == []


def test_a_hand_off_that_moves_the_message_on_awaits_its_commit_with_the_slot_free(tmp_path: Path) -> None:
    """With one slot, the next message goes through its stages while the first one's commit into
    the next queue is still on its way (here: held until the next message has started)."""

    async def scenario() -> list[spool_ops.Entry]:
        spool = Spool(tmp_path / "outbound.sqlite")
        settings = SpoolConfig(workers=1, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)
        started: list[str] = []
        next_started = asyncio.Event()

        def stage(work: Work) -> Work:
            started.append(work.message.id)
            if len(started) == 2:
                next_started.set()
            return work

        async def move_on(work: Work) -> None:
            if work.message.id == started[0]:
                await asyncio.wait_for(next_started.wait(), 10)
            onward = Envelope(ENVELOPE.mail_from, ENVELOPE.rcpt_tos, "", "", "outbound")
            await spool.replace(work.message.id, [(f"{work.message.id}-0", onward, work.message.data)])

        worker = Worker("inbound", spool, Route(Work, (("stage", stage),), move_on, settings, "queue", moves_on=True),
                        Metrics())
        for n in range(2):
            await spool.enqueue(ENVELOPE, f"Subject: {n}\r\n\r\nbody\r\n".encode())
        runner = asyncio.create_task(worker.run())
        return await settled(worker, runner, spool, lambda entries: len(entries) == 2 and all(
            entry.envelope.listener == "outbound" for entry in entries))

    entries = asyncio.run(scenario())
    assert [entry.envelope.listener for entry in entries] == ["outbound", "outbound"]


class Acks(Spool):
    """Records how delivered messages leave the spool: with a claim or in an ack of their own."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.with_claims: list[list[str]] = []
        self.own: list[list[str]] = []

    async def claim(self, limit: int, listener: str | None = None, done: Sequence[str] = (),
                    **rest: Any) -> list[Message]:
        if done:
            self.with_claims.append(list(done))
        return await super().claim(limit, listener, done, **rest)

    async def ack(self, *qids: str) -> None:
        self.own.append(list(qids))
        await super().ack(*qids)


def closed_entries(spool: Spool) -> list[spool_ops.Entry]:
    """What is left in ``spool``, read as the operator's CLI reads it, once the spool is closed."""
    spool.close()
    operator = spool_ops.connect(spool.path)
    try:
        return spool_ops.entries(operator)
    finally:
        operator.close()


def twelve_handed_off(path: Path, method: str, exactly_once: bool) -> tuple[Acks, list[str], list[spool_ops.Entry]]:
    """Twelve messages through a worker of four slots whose hand-off always succeeds: the spool
    that saw how they left, their queue ids, and what is left in it."""
    async def scenario() -> tuple[Acks, list[str], list[spool_ops.Entry]]:
        spool = Acks(path)
        settings = SpoolConfig(workers=4, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)

        async def hand_off(work: Work) -> None:
            await asyncio.sleep(0)

        route = Route(Work, (), hand_off, settings, method, exactly_once=exactly_once)
        worker = Worker("inbound", spool, route, Metrics())
        qids = [await spool.enqueue(ENVELOPE, f"Subject: {n}\r\n\r\nbody\r\n".encode()) for n in range(12)]
        runner = asyncio.create_task(worker.run())
        return spool, qids, await settled(worker, runner, spool, lambda entries: not entries)

    return asyncio.run(scenario())


def test_delivered_messages_leave_the_spool_in_the_commit_of_the_next_claim(tmp_path: Path) -> None:
    spool, qids, left = twelve_handed_off(tmp_path / "inbound.sqlite", "maildir", exactly_once=True)
    assert left == []
    removals = spool.with_claims + spool.own
    assert sorted(qid for qids_ in removals for qid in qids_) == sorted(qids)
    assert spool.with_claims and len(removals) < len(qids)


def test_a_hand_off_that_may_deliver_twice_is_acknowledged_at_once_in_its_own_commit(tmp_path: Path) -> None:
    spool, qids, left = twelve_handed_off(tmp_path / "inbound.sqlite", "smtp", exactly_once=False)
    assert left == []
    assert not any(spool.with_claims)
    assert sorted(qid for qids_ in spool.own for qid in qids_) == sorted(qids)


def test_a_message_handed_on_while_the_worker_stops_leaves_the_spool_at_once_as_delivered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its one slot busy, the worker waits for no mail, and no claim and no timer will take it.
    monkeypatch.setattr(worker_module, "_ACK_DELAY", 3600.0)

    async def scenario() -> tuple[list[spool_ops.Entry], list[str], float]:
        spool = Spool(tmp_path / "inbound.sqlite")
        settings = SpoolConfig(workers=1, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)
        stopping, counted = asyncio.Event(), []

        async def hand_off(work: Work) -> None:
            await stopping.wait()

        route = Route(Work, (), hand_off, settings, "maildir", delivered=lambda work: counted.append(work.message.id),
                      exactly_once=True)
        metrics = Metrics()
        worker = Worker("inbound", spool, route, metrics)
        await spool.enqueue(ENVELOPE, b"Subject: x\r\n\r\nbody\r\n")
        runner = asyncio.create_task(worker.run())
        while not worker._tasks:
            await asyncio.sleep(0.01)
        stop = asyncio.create_task(worker.stop(20))
        await asyncio.sleep(0)
        stopping.set()
        await stop
        runner.cancel()
        left = closed_entries(spool)
        return left, counted, metrics.handoffs.labels("inbound", "delivered")._value.get()

    left, counted, delivered = asyncio.run(scenario())
    assert left == []
    assert len(counted) == 1 and delivered == 1


def test_messages_claimed_while_the_worker_stops_are_left_claimed_for_the_next_start(tmp_path: Path) -> None:
    class Slow(Spool):
        """Its second claim comes back only once the worker was told to stop."""

        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.claims, self.release = 0, asyncio.Event()

        async def claim(self, limit: int, listener: str | None = None, done: Sequence[str] = (),
                        **rest: Any) -> list[Message]:
            self.claims += 1
            if self.claims == 2:
                await self.release.wait()
            return await super().claim(limit, listener, done, **rest)

    async def scenario() -> tuple[list[str], list[spool_ops.Entry]]:
        spool = Slow(tmp_path / "inbound.sqlite")
        settings = SpoolConfig(workers=1, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)
        handed: list[str] = []

        async def hand_off(work: Work) -> None:
            handed.append(work.message.id)

        worker = Worker("inbound", spool, Route(Work, (), hand_off, settings, "maildir", exactly_once=True), Metrics())
        await spool.enqueue(ENVELOPE, b"Subject: 1\r\n\r\nbody\r\n")
        runner = asyncio.create_task(worker.run())
        while spool.claims < 2:
            await asyncio.sleep(0.01)
        await spool.enqueue(ENVELOPE, b"Subject: 2\r\n\r\nbody\r\n")
        stop = asyncio.create_task(worker.stop(5))
        await asyncio.sleep(0)
        spool.release.set()
        await stop
        await asyncio.wait_for(runner, 5)
        left = closed_entries(spool)
        return handed, left

    handed, left = asyncio.run(scenario())
    assert len(handed) == 1
    assert [entry.state for entry in left] == ["active"]


def test_the_acknowledgements_a_failing_claim_carried_are_written_all_the_same(tmp_path: Path) -> None:
    class Breaking(Spool):
        async def claim(self, limit: int, listener: str | None = None, done: Sequence[str] = (),
                        **rest: Any) -> list[Message]:
            if done:
                raise RuntimeError("a bug under the claim")
            return await super().claim(limit, listener, done, **rest)

    async def scenario() -> list[spool_ops.Entry]:
        spool = Breaking(tmp_path / "inbound.sqlite")
        settings = SpoolConfig(workers=1, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)

        async def hand_off(work: Work) -> None:
            await asyncio.sleep(0)

        worker = Worker("inbound", spool, Route(Work, (), hand_off, settings, "maildir", exactly_once=True), Metrics())
        await spool.enqueue(ENVELOPE, b"Subject: 1\r\n\r\nbody\r\n")
        await spool.enqueue(ENVELOPE, b"Subject: 2\r\n\r\nbody\r\n")
        with pytest.raises(RuntimeError):
            await worker.run()
        await worker.stop(5)
        left = closed_entries(spool)
        return left

    assert [entry.state for entry in asyncio.run(scenario())] == ["incoming"]


def test_a_delivered_message_leaves_the_spool_soon_while_every_slot_is_busy(tmp_path: Path) -> None:
    """No claim comes while both slots wait on slow hand-offs: the message delivered meanwhile
    leaves the spool in a commit of its own, within the worker's ack delay."""
    async def scenario() -> tuple[list[str], list[spool_ops.Entry], list[spool_ops.Entry]]:
        spool = Spool(tmp_path / "inbound.sqlite")
        settings = SpoolConfig(workers=2, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)
        release = asyncio.Event()

        async def hand_off(work: Work) -> None:
            if b"slow" in work.message.data:
                await release.wait()

        worker = Worker("inbound", spool, Route(Work, (), hand_off, settings, "maildir", exactly_once=True), Metrics())
        qids = [await spool.enqueue(ENVELOPE, f"Subject: {subject}\r\n\r\nbody\r\n".encode())
                for subject in ("slow", "fast", "fast", "slow")]
        runner = asyncio.create_task(worker.run())
        operator = spool_ops.connect(spool.path)
        deadline = time.monotonic() + 60  # generous: a busy machine may take its time
        while len(waiting := spool_ops.entries(operator)) != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        operator.close()
        release.set()
        return qids, waiting, await settled(worker, runner, spool, lambda entries: not entries)

    qids, waiting, left = asyncio.run(scenario())
    assert sorted(entry.id for entry in waiting) == sorted([qids[0], qids[3]])
    assert {entry.state for entry in waiting} == {"active"}
    assert left == []


def test_a_stop_that_cancels_hand_offs_still_writes_the_acknowledgements_waiting_for_a_claim(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    monkeypatch.setattr(worker_module, "_ACK_DELAY", 3600.0)  # no commit of its own comes: only a claim or the stop

    async def scenario() -> tuple[list[str], list[spool_ops.Entry]]:
        spool = Spool(tmp_path / "inbound.sqlite")
        settings = SpoolConfig(workers=2, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)

        async def hand_off(work: Work) -> None:
            if b"slow" in work.message.data:
                await asyncio.Event().wait()

        worker = Worker("inbound", spool, Route(Work, (), hand_off, settings, "maildir", exactly_once=True), Metrics())
        qids = [await spool.enqueue(ENVELOPE, f"Subject: {subject}\r\n\r\nbody\r\n".encode())
                for subject in ("slow", "fast", "fast", "slow")]
        runner = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 60  # by the event, not by how fast a busy machine gets there
        while qids[2] not in [qid for qid, _ in worker._acks] and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # the third message, handed on, waits for a claim that will not come
        await worker.stop(0)
        runner.cancel()
        left = closed_entries(spool)
        return qids, left

    qids, left = asyncio.run(scenario())
    assert sorted(entry.id for entry in left) == sorted([qids[0], qids[3]])


def through_one_message(tmp_path: Path, route: Route[Work]) -> list[spool_ops.Entry]:
    """One message through a worker on ``route``: the spool's entries once it has left the
    queue or been deferred."""
    async def scenario() -> list[spool_ops.Entry]:
        spool = Spool(tmp_path / "inbound.sqlite")
        worker = Worker("inbound", spool, route, Metrics())
        runner = asyncio.create_task(worker.run())
        await spool.enqueue(ENVELOPE, b"Subject: x\r\n\r\nbody\r\n")
        return await settled(worker, runner, spool, lambda entries: not entries or entries[0].state == "deferred")

    return asyncio.run(scenario())


def test_consecutive_in_thread_stages_run_in_one_call_on_the_routes_executor(tmp_path: Path) -> None:
    threads: list[tuple[str, str]] = []
    submitted: list[object] = []

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            submitted.append(fn)
            return super().submit(fn, *args, **kwargs)

    def stage(name: str):  # type: ignore[no-untyped-def]
        def run(work: Work) -> Work:
            threads.append((name, threading.current_thread().name))
            return work
        return run

    async def hand_off(work: Work) -> None:
        threads.append(("hand-off", threading.current_thread().name))

    executor = Counting(max_workers=1, thread_name_prefix="store")
    stages = (("parse", stage("parse")), ("profile", InThread(stage("profile"))),
              ("score", InThread(stage("score"))), ("annotate", stage("annotate")))
    settings = SpoolConfig(workers=1, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)
    assert through_one_message(tmp_path, Route(Work, stages, hand_off, settings, "maildir", executor=executor)) == []
    executor.shutdown()
    assert [name for name, _ in threads] == ["parse", "profile", "score", "annotate", "hand-off"]
    assert {thread for name, thread in threads if name in ("profile", "score")} == {"store_0"}
    assert threads[0][1] == threads[3][1] == threading.main_thread().name
    assert len(submitted) == 1


def test_a_failing_in_thread_stage_is_named_in_the_deferral(tmp_path: Path) -> None:
    def fails(work: Work) -> Work:
        raise ValueError("no such column")

    async def hand_off(work: Work) -> None:
        raise AssertionError("never reached")

    stages = (("profile", InThread(lambda work: work)), ("assign", InThread(fails)))
    settings = SpoolConfig(workers=1, retry_initial=100, retry_max=100, max_lifetime=60, max_stage_failures=3)
    (entry,) = through_one_message(tmp_path, Route(Work, stages, hand_off, settings, "maildir"))
    assert entry.last_error == "stage assign raised ValueError: no such column"


def test_smtp_delivery_hands_the_message_to_the_mail_server_for_the_owners_address(make_daemon) -> None:
    sink = SmtpSink()
    try:
        daemon = make_daemon({"delivery": {"method": "smtp", "port": sink.port}})
        send(daemon, "relay me")
        (received,) = [m for m in sink.messages(expect=2) if b"triage:" not in m]
    finally:
        sink.stop()
    assert b"X-Mail-Args: <customer@example.org>" in received
    assert b"X-Rcpt-Args: <yamada@example.test>" in received or b"X-Rcpt-Args: <smith@example.test>" in received
    assert b"X-Mailpipe-Owner: " in received
    assert b"Subject: [#1] relay me\n" in received
    assert received.endswith(b"\n\nbody\n\n")


def test_a_4xx_from_the_mail_server_defers_and_the_message_is_delivered_once_it_recovers(make_daemon) -> None:
    refusing = SmtpSink(soft="RCPT")
    daemon = make_daemon({"delivery": {"method": "smtp", "port": refusing.port}})
    try:
        send(daemon)
        wait_until(lambda: any(e["state"] == "deferred" for e in queue_list(daemon)))
        (entry,) = queue_list(daemon)
        assert entry["reason"].startswith(f"smtp 127.0.0.1:{refusing.port} said 4")
    finally:
        refusing.stop()
    healthy = SmtpSink(port=refusing.port)
    try:
        assert len(healthy.messages(expect=2, timeout=15)) == 2  # the message and its triage card
        wait_until(lambda: queue_list(daemon) == [])
    finally:
        healthy.stop()


def test_a_5xx_from_the_mail_server_quarantines_the_message_with_the_reply(make_daemon) -> None:
    sink = SmtpSink(hard="RCPT")
    try:
        daemon = make_daemon({"delivery": {"method": "smtp", "port": sink.port}})
        send(daemon)
        wait_until(lambda: any(e["state"] == "quarantine" for e in queue_list(daemon)))
    finally:
        sink.stop()
    (entry,) = queue_list(daemon)
    assert " said 5" in entry["reason"]


def test_an_unreachable_mail_server_defers(make_daemon) -> None:
    daemon = make_daemon({"delivery": {"method": "smtp", "port": free_port()}})
    send(daemon)
    wait_until(lambda: any(e["state"] == "deferred" for e in queue_list(daemon)))


class _Collect:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok"


class _LMTPController(Controller):
    def factory(self):
        return LMTP(self.handler)


def test_lmtp_delivery_reaches_an_lmtp_server(make_daemon) -> None:
    collector = _Collect()
    port = free_port()
    controller = _LMTPController(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        daemon = make_daemon({"delivery": {"method": "lmtp", "port": port}})
        send(daemon, "via lmtp")
        wait_until(lambda: len(collector.received) == 2)
    finally:
        controller.stop()
    (mail_from, rcpts, content), (card_from, _, card) = collector.received
    assert card_from == "<>" and b"triage:" in card
    assert mail_from == "customer@example.org"
    assert rcpts[0] in ("yamada@example.test", "smith@example.test")
    assert b"Subject: [#1] via lmtp" in content


def test_relay_delivery_verifies_the_servers_certificate_over_starttls(make_daemon, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    collector = _Collect()
    port = free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True)
    controller.start()
    try:
        daemon = make_daemon({"delivery": {"method": "smtp", "port": port, "starttls": True,
                                           "ca_file": str(tmp_path / "ca.pem")}})
        send(daemon, "over tls")
        wait_until(lambda: len(collector.received) == 2)
    finally:
        controller.stop()


def test_maildir_delivery_recreates_a_mailbox_removed_while_running(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)
    asyncio.run(deliverer.deliver(AGENT, [(message("Q4"), b"x")]))
    shutil.rmtree(tmp_path / "yamada")
    asyncio.run(deliverer.deliver(AGENT, [(message("Q5"), b"y")]))
    assert len(list((tmp_path / "yamada" / "new").iterdir())) == 1
