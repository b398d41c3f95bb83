"""What became of each agent's reply, recorded on its case as the send queue learns it.

``Fates.record`` sets a reply's fate in the store (``store.desk``: sent, deferred, bounced; the
submission worker records queued and held itself), counts it once in
``mailpipe_reply_fates_total`` (a repeat after a crash changes nothing and counts nothing), and
observes the case's first response time when an acceptance answered the case for the first
time. It never raises for the store: the remote server has already answered, and retrying the
hand-off to record a fate would send the reply twice; a fate lost to an unreachable store is
logged instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mailpipe.errors import StoreUnavailable
from mailpipe.metrics import Metrics
from mailpipe.spool import Message
from mailpipe.store import FateChange, FateStore
from mailpipe.store.desk import FATES, reply_queue_id

log = logging.getLogger("mailpipe.outbound")


class Fates:
    def __init__(self, store: FateStore, metrics: Metrics, clock: Callable[[], float] = time.time):
        self.store = store
        self.metrics = metrics
        self._clock = clock
        for fate in FATES:
            metrics.reply_fates.labels(fate)

    async def record(self, message: Message, fate: str, detail: str) -> FateChange | None:
        """The fate of the reply ``message`` is (a send queue entry of); None for mail that is
        no reply in a case, or when the store cannot be reached."""
        try:
            change = await asyncio.to_thread(self.store.set_fate, fate, detail, self._clock(),
                                             queue_id=reply_queue_id(message.id))
        except StoreUnavailable as exc:
            log.warning("reply fate not recorded: store unreachable",
                        extra={"queue_id": message.id, "fate": fate, "error": str(exc)})
            return None
        if change is None or not change.changed:
            return change
        self.metrics.reply_fates.labels(fate).inc()
        case = change.case
        if change.first_response and case.first_response_at is not None:
            self.metrics.first_response_seconds.labels(case.level).observe(
                max(0.0, case.first_response_at - case.opened_at))
        log.info("reply fate", extra={"queue_id": message.id, "case": case.id, "fate": fate, "detail": detail,
                                      "reopened": change.reopened})
        return change
