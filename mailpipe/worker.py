"""Claims spooled messages, runs them through the stage table, hands them on, acks them.

Outcomes, and what the spool does with each:
- delivered: removed from the spool (only now: the next hop has the message);
- ``TemporaryFailure``: deferred with exponential backoff, quarantined after ``max_lifetime``;
- ``PermanentFailure``: quarantined with the next hop's answer;
- anything a stage raises: deferred, and quarantined after ``max_stage_failures`` (a poison
  message never blocks the queue).
A shutdown leaves unfinished messages claimed; the next start puts them back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailpipe.config import SpoolConfig
from mailpipe.deliver import Deliverer, PermanentFailure, TemporaryFailure, headers
from mailpipe.metrics import Metrics
from mailpipe.pipeline import Stage, Work
from mailpipe.spool import Message, Spool

log = logging.getLogger("mailpipe.worker")

_IDLE_POLL = 1.0  # picks up `queue flush/release` from the CLI and deferred messages coming due


class NoRecipients(Exception):
    """The stages ended without a mailbox to deliver to."""


def triage_card_message(message: Message, card: bytes) -> Message:
    """The triage card travels as its own message: its own id (so Maildir delivery stays
    idempotent for it too) and the null envelope sender of an automatic message (RFC 3834)."""
    envelope = dataclasses.replace(message.entry.envelope, mail_from="")
    return Message(dataclasses.replace(message.entry, id=message.id + "T", envelope=envelope), card)


@dataclass(frozen=True)
class Route:
    """What a reload swaps as one unit: the stages and where their result goes."""

    stages: Sequence[tuple[str, Stage]]
    deliverer: Deliverer
    settings: SpoolConfig
    delivered: Callable[[Work], None] = lambda work: None  # counts what was handed on


class Worker:
    def __init__(self, name: str, spool: Spool, route: Route, metrics: Metrics):
        self.name = name
        self.route = route
        self._spool = spool
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before looking, so an arrival during the claim still wakes the wait below.
            self._spool.arrived.clear()
            self._slot_free.clear()
            free = self.route.settings.workers - len(self._tasks)
            batch = await self._spool.claim(free) if free > 0 else []
            for message in batch:
                task = asyncio.create_task(self._process(message, self.route))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
            if not batch:
                await self._wait_for_work(free > 0)

    async def _wait_for_work(self, have_slots: bool) -> None:
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        waiters.append(asyncio.ensure_future(
            self._spool.arrived.wait() if have_slots else self._slot_free.wait()))
        await asyncio.wait(waiters, timeout=_IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_free.set()

    async def stop(self, timeout: float) -> None:
        """Claim nothing more; give hand-offs in flight ``timeout`` seconds to finish."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _process(self, message: Message, route: Route) -> None:
        work = Work(message)
        current = "start"
        try:
            for name, stage in route.stages:
                current = name
                started = time.perf_counter()
                result = stage(work)
                work = await result if inspect.isawaitable(result) else result
                self._metrics.stage_seconds.labels(self.name, name).observe(time.perf_counter() - started)
            current = "deliver"
            if not work.recipients:
                raise NoRecipients("triage chose no mailbox")
            fields = b"".join(headers.field(name, value) for name, value in work.fields)
            content = headers.with_headers(message.data, fields, work.subject, work.authserv_id)
            items = [(message, content)]
            if work.card:
                card = triage_card_message(message, work.card)
                items.append((card, card.data))
            for agent in work.recipients:
                await route.deliverer.deliver(agent, items)
        except TemporaryFailure as exc:
            await self._retry_later(message, route.settings, str(exc))
        except PermanentFailure as exc:
            await self._quarantine(message, f"{route.deliverer.method}: {exc}")
        except Exception as exc:
            await self._stage_failed(message, route.settings, current, exc)
        else:
            await self._spool.ack(message.id)
            route.delivered(work)
            self._metrics.handoffs.labels(self.name, "delivered").inc()
            self._metrics.handoff_seconds.labels(self.name).observe(
                max(0.0, time.time() - message.entry.received_at))
            log.info("delivered", extra={"queue_id": message.id, "to": ",".join(a.id for a in work.recipients),
                                         "case": work.record.case.id if work.record else "",
                                         "level": work.verdict.level if work.verdict else "",
                                         "method": route.deliverer.method})

    async def _retry_later(self, message: Message, settings: SpoolConfig, reason: str) -> None:
        entry = message.entry
        if time.time() - entry.received_at > settings.max_lifetime:
            await self._quarantine(message, f"expired after {entry.attempts + 1} attempts: {reason}")
            return
        delay = min(settings.retry_max, settings.retry_initial * 2 ** entry.attempts)
        await self._spool.defer(message.id, reason, delay)
        self._metrics.handoffs.labels(self.name, "deferred").inc()
        log.warning("deferred", extra={"queue_id": message.id, "delay": round(delay, 1), "reason": reason})

    async def _stage_failed(self, message: Message, settings: SpoolConfig, stage: str, exc: Exception) -> None:
        reason = f"stage {stage} raised {type(exc).__name__}: {exc}"
        log.error("stage failed", exc_info=exc, extra={"queue_id": message.id, "stage": stage})
        if message.entry.stage_failures + 1 >= settings.max_stage_failures:
            await self._quarantine(message, reason)
            return
        await self._spool.defer(message.id, reason, settings.retry_initial, stage_failure=True)
        self._metrics.handoffs.labels(self.name, "deferred").inc()

    async def _quarantine(self, message: Message, reason: str) -> None:
        await self._spool.quarantine(message.id, reason)
        self._metrics.handoffs.labels(self.name, "quarantined").inc()
        log.error("quarantined", extra={"queue_id": message.id, "reason": reason})
