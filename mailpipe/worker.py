"""Claims spooled messages, runs them through the stage table, hands them on, acks them.

One worker per queue (``mailpipe.queues``). Outcomes (``mailpipe.errors``), and what the spool
does with each:
- delivered: removed from the spool (only now: the next hop has the message), or already moved
  into the next queue by the hand-off itself (``Route.moves_on``);
- ``TemporaryFailure``: deferred with exponential backoff, quarantined after ``max_lifetime``;
- ``PermanentFailure``: quarantined with the next hop's answer;
- ``Refused``: the next hop refused for good and the sender was told: removed, counted as
  ``refused`` (the hand-off logged each recipient's refusal; nothing is logged as delivered);
- ``Held``: parked in ``hold`` with the reason, for a person to release or delete;
- ``Consumed``: a stage was the message's destination (a report parser): removed;
- anything a stage raises: deferred, and quarantined after ``max_stage_failures`` (a poison
  message never blocks the queue);
- a storage fault (``storage_fault``: the store out of reach, its or a mailbox's disk full, read-only,
  failing or corrupt): deferred with backoff, never quarantined nor expired: the message is not
  what is broken; ``faults`` says what is wrong until a message gets through again.
The worker itself survives a spool that cannot be read or written: claiming backs off and
retries, and an outcome that cannot be written is written again until it can (or, at shutdown,
left claimed).
A stage declared ``InThread`` leaves the event loop: each run of consecutive ``InThread`` stages
goes to the route's executor as one call (the store-side work of a message is one thread hop,
not one per stage), each stage still timed on its own.
The worker claims as many messages as it has slots whenever it has run out of claimed ones,
and starts each as a slot frees, so a busy queue costs one claim (one spool commit) per slot
count of messages rather than one per message. Where the hand-off delivers exactly once
(``Route.exactly_once``: Maildir), the removal of a delivered message rides in that claim's
commit, or in a commit of its own when no claim comes within ``_ACK_DELAY``: an acknowledgement
of its own per message was 0.65 spool commits (each an fsync and two thread wake-ups) per
message in bench/drain.py. A message is removed only after its hand-off returned, as before; a
crash before its removal is committed hands it off again, and the hand-off delivers nothing
twice.
A shutdown leaves unfinished messages claimed (those waiting for a slot too); the next start
puts them back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import itertools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mailpipe.committer import storage_error
from mailpipe.config import SpoolConfig
from mailpipe.errors import (
    Consumed,
    Held,
    PartlyDeferred,
    PermanentFailure,
    Refused,
    StoreUnavailable,
    TemporaryFailure,
)
from mailpipe.metrics import Metrics
from mailpipe.spool import Message, Spool

log = logging.getLogger("mailpipe.worker")

_IDLE_POLL = 1.0  # picks up `queue flush/release` from the CLI and deferred messages coming due
_SPOOL_RETRY_FIRST, _SPOOL_RETRY_MAX = 0.5, 10.0  # backoff while the spool cannot be written
_STORAGE_RETRY_MAX = 60.0  # mail deferred by a storage fault goes on within a minute of its end
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
# How long a delivered message may wait for the next claim to take it out of the spool. It bounds
# the wait where no claim comes (every slot busy with a slow hand-off) and keeps the window in
# which a crash makes a hand-off run again to a few tens of milliseconds, as a commit queued
# behind others already does.
_ACK_DELAY = 0.05

W = TypeVar("W")


def storage_fault(exc: BaseException) -> str | None:
    """Which storage failed under a stage ("store", "disk"), or None when the error is the
    message's or the code's own: those are retried a few times and then quarantined."""
    if isinstance(exc, StoreUnavailable) or (isinstance(exc, sqlite3.Error) and storage_error(exc)):
        return "store"
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return "disk"
    return None


@dataclass(frozen=True)
class InThread(Generic[W]):
    """A stage that blocks (on the store, the disk) and so runs in the route's executor; called
    directly, it runs in the caller's thread, as tests and benchmarks call stages."""

    run: Callable[[W], W]

    def __call__(self, work: W) -> W:
        return self.run(work)


Stage = Callable[[W], W | Awaitable[W]] | InThread[W]


@dataclass(frozen=True)
class Route(Generic[W]):
    """What a reload swaps as one unit: how a message becomes work, the stages in order, and
    the hand-off of the result to the next hop (which must be idempotent per queue id)."""

    start: Callable[[Message], W]
    stages: Sequence[tuple[str, Stage[W]]]
    hand_off: Callable[[W], Awaitable[None]]
    settings: SpoolConfig
    method: str
    delivered: Callable[[W], None] = lambda work: None  # counts what was handed on
    summary: Callable[[W], Mapping[str, Any]] = lambda work: {}  # for the hand-off's log line
    # What the log calls a hand-off: "delivered" to a mailbox, "queued for sending" into the send
    # queue, "removed" (as Postfix says) once the send queue is done with every recipient, each
    # logged by the hand-off as sent or refused: never "delivered" for mail that was not.
    event: str = "delivered"
    # The hand-off takes the message out of this queue in its own commit (``Spool.replace`` into
    # the next queue of the same file): an acknowledgement after it would be a second commit that
    # deletes nothing. That commit is the hand-off's only work, so it is awaited with the slot
    # free, as any other queue's outcome is.
    moves_on: bool = False
    # A hand-off done twice delivers once (Maildir's file named by queue id), so its message may
    # wait for the next claim to leave the spool. Not for SMTP or LMTP (the agents' server, a
    # customer's): a crash between hand-off and acknowledgement delivers again, and that window
    # stays one commit long.
    exactly_once: bool = False
    # Where ``InThread`` stages run: None is the event loop's default executor.
    executor: Executor | None = None


async def run_stages(stages: Sequence[tuple[str, Stage[W]]], work: W, executor: Executor | None,
                     observe: Callable[[str, float], None] = lambda stage, seconds: None,
                     current: list[str] | None = None) -> W:
    """``work`` through ``stages`` in order, as the worker runs them (and the benchmarks, to run
    them the same way): each run of consecutive ``InThread`` stages in one call on ``executor``;
    ``observe`` gets each stage's wall time, ``current[0]`` names the stage running."""
    running = current if current is not None else [""]
    for threaded, run in itertools.groupby(stages, lambda named: isinstance(named[1], InThread)):
        if threaded:
            work = await asyncio.get_running_loop().run_in_executor(executor, _in_order, list(run), work, observe,
                                                                    running)
            continue
        for name, stage in run:
            running[0] = name
            started = time.perf_counter()
            result = stage(work)
            work = await result if inspect.isawaitable(result) else result
            observe(name, time.perf_counter() - started)
    return work


def _settle(acks: list[tuple[str, asyncio.Future[None]]]) -> None:
    """The messages of ``acks`` left the spool (or, at shutdown, are left claimed for the next
    start): their ``_process`` goes on."""
    for _, done in acks:
        if not done.done():
            done.set_result(None)


def _in_order(stages: Sequence[tuple[str, InThread[W]]], work: W, observe: Callable[[str, float], None],
              current: list[str]) -> W:
    """Consecutive ``InThread`` stages, in the executor's thread, one after another."""
    for name, stage in stages:
        current[0] = name
        started = time.perf_counter()
        work = stage(work)
        observe(name, time.perf_counter() - started)
    return work


class Worker:
    def __init__(self, name: str, spool: Spool, route: Route[Any], metrics: Metrics):
        self.name = name
        self.route = route
        self._spool = spool
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._claimed: deque[Message] = deque()  # claimed ahead, waiting for a free slot
        self._acks: list[tuple[str, asyncio.Future[None]]] = []  # handed on, to leave the spool
        self._ack_timer: asyncio.TimerHandle | None = None  # writes ``_acks`` when no claim came
        self._waiting_for_mail = False  # not for a slot: no claim comes until mail arrives
        self._acking: set[asyncio.Task[None]] = set()  # acknowledgements in commits of their own
        self._busy = 0  # messages in their stages or hand-off: the slots taken
        self.faults: dict[str, str] = {}  # "spool", "store", "disk": what failed last, until it works again

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            # Cleared before looking, so an arrival during the claim still wakes the wait below.
            self._spool.arrival(self.name).clear()
            self._slot_free.clear()
            free = self.route.settings.workers - self._busy
            if free > 0 and not self._claimed:
                # A whole slot count at once, not one claim (one spool commit) per freed slot.
                acks = self._take_acks()
                try:
                    claimed = await self._spool.claim(self.route.settings.workers, self.name,
                                                      [qid for qid, _ in acks], quarantined=self._unreadable)
                except sqlite3.Error as exc:
                    self._commit_acks(acks)
                    failures += 1
                    await self._spool_failed(exc, failures)
                    continue
                except Exception:
                    self._commit_acks(acks)  # the messages are handed on: they still leave the spool
                    raise
                _settle(acks)
                if self._stopping.is_set():
                    break  # claimed while stopping: left claimed, the next start puts them back
                self._claimed.extend(claimed)
                if failures:
                    log.warning("spool readable again", extra={"queue": self.name})
                failures = 0
                self.faults.pop("spool", None)
            started = 0
            while started < free and self._claimed:
                self._busy += 1
                task = asyncio.create_task(self._process(self._claimed.popleft(), self.route))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
                started += 1
            if not started:
                await self._wait_for_work(free > 0)

    async def _wait_for_work(self, have_slots: bool) -> None:
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        waiters.append(asyncio.ensure_future(
            self._spool.arrival(self.name).wait() if have_slots else self._slot_free.wait()))
        if have_slots:  # no claim comes until mail arrives: acknowledgements waiting for one go now
            self._ack_now()
        self._waiting_for_mail = have_slots
        try:
            await asyncio.wait(waiters, timeout=_IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting_for_mail = False
        for waiter in waiters:
            waiter.cancel()

    async def _spool_failed(self, exc: sqlite3.Error, failures: int) -> None:
        """Notes the fault and waits (or until stopped) before the spool is tried again."""
        if "spool" not in self.faults:
            log.error("spool fault: retrying with backoff", extra={"queue": self.name, "error": str(exc)})
        self.faults["spool"] = f"{type(exc).__name__}: {exc}"
        delay = min(_SPOOL_RETRY_MAX, _SPOOL_RETRY_FIRST * 2 ** min(failures - 1, 10))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _acknowledge(self, qid: str) -> asyncio.Future[None]:
        """Done once ``qid``, handed on, has left the spool: with the next claim where one is on
        its way (claimed messages wait for slots, or the worker waits for a slot to claim), else
        at once (as while stopping: no claim comes); after ``_ACK_DELAY`` at the latest, in a
        commit of its own (with every other acknowledgement waiting then)."""
        done = asyncio.get_running_loop().create_future()
        self._acks.append((qid, done))
        if (self._waiting_for_mail and not self._claimed) or self._stopping.is_set():
            self._ack_now()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(_ACK_DELAY, self._ack_now)
        return done

    def _take_acks(self) -> list[tuple[str, asyncio.Future[None]]]:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        acks, self._acks = self._acks, []
        return acks

    def _ack_now(self) -> None:
        self._commit_acks(self._take_acks())

    def _commit_acks(self, acks: list[tuple[str, asyncio.Future[None]]]) -> None:
        """Writes ``acks`` in a commit of their own, again while the spool fails (``_write``),
        in a task that ``stop`` waits for to the end, never cancels."""
        if not acks:
            return
        qids = [qid for qid, _ in acks]

        async def commit() -> None:
            await self._write(lambda: self._spool.ack(*qids))
            _settle(acks)

        task = asyncio.create_task(commit())
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _write(self, operation: Callable[[], Awaitable[None]]) -> None:
        """Writes a message's outcome to the spool, again and again while the spool fails; at
        shutdown the message is left claimed, and the next start puts it back in the queue."""
        failures = 0
        while True:
            try:
                await operation()
            except sqlite3.Error as exc:
                failures += 1
                if self._stopping.is_set():
                    log.warning("outcome not written before shutdown: recovered at next start",
                                extra={"queue": self.name, "error": str(exc)})
                    return
                await self._spool_failed(exc, failures)
                continue
            if failures:
                self.faults.pop("spool", None)
            return

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_free.set()

    async def stop(self, timeout: float) -> None:
        """Claim nothing more; give hand-offs in flight ``timeout`` seconds to finish."""
        self._stopping.set()
        self._ack_now()  # no claim will take them
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Acknowledgements still waiting (their message's task was cancelled meanwhile) are written
        # now, not by a timer after the spool closed; each commit is tried once, as ``_write`` does
        # at shutdown (left claimed if it fails: the next start hands the message off again).
        self._ack_now()
        if self._acking:
            await asyncio.wait(set(self._acking))

    def _free_slot(self) -> None:
        self._busy -= 1
        self._slot_free.set()

    async def _process(self, message: Message, route: Route[Any]) -> None:
        """The stages and the hand-off hold a slot; the outcome is written to the spool with the
        slot already free, so the next message starts while the commit is on its way (the
        hand-off of a route that ``moves_on`` is that commit). A slot bounds the work in stages:
        with it held through an fsync, eight slots were eight messages waiting on the disk."""
        current = ["start"]  # the stage running, written by the executor's thread too
        failure: Exception | None = None
        holding = True
        try:
            work = route.start(message)
            work = await run_stages(route.stages, work, route.executor, self._observe, current)
            current[0] = "hand-off"
            if route.moves_on:
                self._free_slot()
                holding = False
            await route.hand_off(work)
        except Exception as exc:
            failure = exc
        finally:
            if holding:
                self._free_slot()
        try:
            if failure is not None:
                raise failure
        except Refused:
            await self._spool.ack(message.id)
            self._metrics.handoffs.labels(self.name, "refused").inc()
        except Consumed as exc:
            await self._write(lambda: self._spool.ack(message.id))
            self._metrics.handoffs.labels(self.name, "consumed").inc()
            log.info("consumed", extra={"queue_id": message.id, "by": str(exc)})
            self._storage_works()
        except Held as exc:
            why = str(exc)
            await self._write(lambda: self._spool.hold(message.id, why))
            self._metrics.handoffs.labels(self.name, "held").inc()
            log.warning("held", extra={"queue_id": message.id, "reason": str(exc)})
        except TemporaryFailure as exc:
            fault = storage_fault(exc.__cause__) if exc.__cause__ is not None else None
            if fault is None:
                await self._retry_later(message, route.settings, exc)
            else:  # a mailbox's disk: not the message's fault, however long it lasts
                await self._storage_failed(message, route.settings, current[0], fault, exc)
        except PermanentFailure as exc:
            await self._quarantine(message, f"{route.method}: {exc}")
        except Exception as exc:
            fault = storage_fault(exc)
            if fault is None:
                await self._stage_failed(message, route.settings, current[0], exc)
            else:
                await self._storage_failed(message, route.settings, current[0], fault, exc)
        else:
            if route.exactly_once:
                await self._acknowledge(message.id)
            elif not route.moves_on:
                await self._write(lambda: self._spool.ack(message.id))
            route.delivered(work)
            self._metrics.handoffs.labels(self.name, "delivered").inc()
            self._metrics.handoff_seconds.labels(self.name).observe(
                max(0.0, time.time() - message.entry.received_at))
            log.info(route.event, extra={"queue_id": message.id, **route.summary(work), "method": route.method})
            self._storage_works()

    def _unreadable(self, qid: str) -> None:
        """A row the claim quarantined because it could not be read counts as any quarantine does."""
        self._metrics.handoffs.labels(self.name, "quarantined").inc()

    def _observe(self, stage: str, seconds: float) -> None:
        self._metrics.stage_seconds.labels(self.name, stage).observe(seconds)

    def _storage_works(self) -> None:
        """A message went all the way through: the store and disks that failed before work again."""
        for kind in ("store", "disk"):
            if self.faults.pop(kind, None) is not None:
                log.warning("storage works again", extra={"queue": self.name, "storage": kind})

    async def _retry_later(self, message: Message, settings: SpoolConfig, failure: Exception) -> None:
        entry, reason = message.entry, str(failure)
        if time.time() - entry.received_at > settings.max_lifetime:
            await self._quarantine(message, f"expired after {entry.attempts + 1} attempts: {reason}")
            return
        # An attempt the operator asked for keeps the backoff where it was: it is not counted.
        counted = entry.attempts - 1 if entry.manual and entry.attempts else entry.attempts
        delay = min(settings.retry_max, settings.retry_initial * 2 ** counted)
        if isinstance(failure, PartlyDeferred):
            recipients = list(failure.recipients)
            await self._write(lambda: self._spool.narrow(message.id, recipients, reason, delay))
        else:
            await self._write(lambda: self._spool.defer(message.id, reason, delay))
        self._metrics.handoffs.labels(self.name, "deferred").inc()
        log.warning("deferred", extra={"queue_id": message.id, "delay": round(delay, 1), "reason": reason,
                                       **getattr(failure, "details", {})})

    async def _storage_failed(self, message: Message, settings: SpoolConfig, stage: str, kind: str,
                              exc: Exception) -> None:
        """Not the message's fault: deferred with backoff, however often and for however long."""
        reason = f"{kind} fault in stage {stage}: {type(exc).__name__}: {exc}"
        if kind not in self.faults:
            log.error("storage fault: mail waits in the spool", extra={"queue": self.name, "storage": kind,
                                                                       "error": str(exc)})
        self.faults[kind] = reason
        delay = min(settings.retry_max, _STORAGE_RETRY_MAX, settings.retry_initial * 2 ** message.entry.attempts)
        await self._write(lambda: self._spool.defer(message.id, reason, delay))
        self._metrics.handoffs.labels(self.name, "deferred").inc()
        log.warning("deferred", extra={"queue_id": message.id, "delay": round(delay, 1), "reason": reason})

    async def _stage_failed(self, message: Message, settings: SpoolConfig, stage: str, exc: Exception) -> None:
        reason = f"stage {stage} raised {type(exc).__name__}: {exc}"
        log.error("stage failed", exc_info=exc, extra={"queue_id": message.id, "stage": stage})
        if message.entry.stage_failures + 1 >= settings.max_stage_failures:
            await self._quarantine(message, reason)
            return
        await self._write(lambda: self._spool.defer(message.id, reason, settings.retry_initial, stage_failure=True))
        self._metrics.handoffs.labels(self.name, "deferred").inc()

    async def _quarantine(self, message: Message, reason: str) -> None:
        await self._write(lambda: self._spool.quarantine(message.id, reason))
        self._metrics.handoffs.labels(self.name, "quarantined").inc()
        log.error("quarantined", extra={"queue_id": message.id, "reason": reason})
