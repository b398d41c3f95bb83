"""Provider incidents: "Google is refusing our mail right now", known to triage and operators.

Refusals that are the sender's problem rather than one mailbox's — authentication,
reputation, policy, content — from one provider, ``threshold`` of them within ``window``
seconds (live replies and bounces alike), open an incident; each further refusal keeps it
open and adds the recipient to the customers affected (whose owners can phone them before
they write in); ``quiet`` seconds without one end it. Incidents are kept in the store, so
``mailpipe incidents`` sees what the daemon saw. Triage reads ``active()``: a customer who
writes "my mail does not arrive at Gmail" during a Google incident is boosted by rules with
``incident = true``, and the agent's triage card names the incident.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable

from mailpipe.metrics import Metrics
from mailpipe.outbound.classify import UNKNOWN
from mailpipe.providers import OTHER
from mailpipe.store import IncidentRecord, IncidentStore, StoreUnavailable

log = logging.getLogger("mailpipe.monitors")

SIGNIFICANT = frozenset({"authentication", "reputation", "policy", "content"})


class Incidents:
    def __init__(self, store: IncidentStore, metrics: Metrics, *, threshold: int = 3, window: float = 600.0,
                 quiet: float = 1800.0, clock: Callable[[], float] = time.time):
        self.store = store
        self.metrics = metrics
        self.threshold = threshold
        self.window = window
        self.quiet = quiet
        self._clock = clock
        self._recent: defaultdict[str, deque[float]] = defaultdict(deque)
        try:
            known = store.incidents(active=True)
        except StoreUnavailable as exc:
            log.warning("open incidents unknown until the store answers", extra={"error": str(exc)})
            known = ()
        self._open: dict[str, IncidentRecord] = {record.provider: record for record in known}
        for provider in self._open:
            metrics.incident_active.labels(provider).set(1)

    def active(self) -> frozenset[str]:
        return frozenset(self._open)

    def describe(self, provider: str) -> IncidentRecord | None:
        return self._open.get(provider)

    def observe(self, provider: str, klass: str, reply: str, customer: str) -> None:
        """One refusal of our mail (call from a worker thread: it writes to the store). Never
        raises for an unreachable store: it is called after the mail left, and must not make
        the send queue try it again."""
        try:
            self._observe(provider, klass, reply, customer)
        except StoreUnavailable as exc:
            log.warning("incident not recorded: store unreachable", extra={"provider": provider, "error": str(exc)})

    def _observe(self, provider: str, klass: str, reply: str, customer: str) -> None:
        if (klass not in SIGNIFICANT and klass != UNKNOWN) or provider == OTHER:
            return
        now = self._clock()
        recent = self._recent[provider]
        recent.append(now)
        while recent and recent[0] < now - self.window:
            recent.popleft()
        record = self._open.get(provider)
        if record is None and (klass == UNKNOWN or len(recent) >= self.threshold):
            record = self.store.open_incident(provider, klass, reply, now)
            self._open[provider] = record
            self.metrics.incident_active.labels(provider).set(1)
            self.metrics.incidents_opened.labels(provider).inc()
            log.error("incident opened", extra={"provider": provider, "class": klass, "reply": reply})
        if record is not None:
            self._open[provider] = self.store.touch_incident(record.id, now, customer)

    def end_quiet(self) -> None:
        try:
            self._end_quiet()
        except StoreUnavailable as exc:
            log.warning("incidents not ended: store unreachable", extra={"error": str(exc)})

    def _end_quiet(self) -> None:
        now = self._clock()
        for provider, record in list(self._open.items()):
            if record.last_seen < now - self.quiet:
                self.store.end_incident(record.id, now)
                del self._open[provider]
                self.metrics.incident_active.labels(provider).set(0)
                log.warning("incident ended", extra={"provider": provider, "since": record.started})
