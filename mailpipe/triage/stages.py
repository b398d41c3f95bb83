"""What happens to an inbound message between the spool and the owners' mailboxes, in order.

The order lives in one table, ``Triage.stages``: route → parse → authenticate → predict → profile
→ score → assign → acknowledge → annotate; ``hand_off`` then files the original and its triage card in
each recipient's mailbox. ``route`` takes DMARC reports and bounces of our own mail off the
queue (``monitors.returned``); the outbound twin of this table is ``outbound.replies``. Pure
stages are plain functions of ``Work`` (``triage.work``); profile and assign, which read and
write the store, and score between them are ``InThread`` stages: the worker runs the three in one
call on the store's own threads (``store_threads``), so a message's store-side work is one thread
hop rather than a hop out and back for each of the two.
What the stages call lives beside them in ``triage/``: the rules and scoring, ``assign``,
``context`` and ``render`` (our header fields and the triage card). ``assign``
decides inside the transaction that records customer, case, message and assignments, and the
recipients come from what it stored, never from a fresh decision, so a message triaged again
after a crash goes to the same mailboxes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from mailpipe import auth
from mailpipe.addresses import canonical
from mailpipe.config import Agent, TriageConfig
from mailpipe.deliver import Deliverer, headers, notice
from mailpipe.errors import NoRecipients
from mailpipe.message import parse
from mailpipe.metrics import Metrics
from mailpipe.monitors.incidents import Incidents
from mailpipe.monitors.returned import Returned
from mailpipe.outbound.acknowledge import Acknowledger, suppression
from mailpipe.spool import Spool
from mailpipe.store import TriageStore
from mailpipe.triage.assign import assign, is_fallback
from mailpipe.triage.context import document, triage_context
from mailpipe.triage.model import UrgencyModel, clipped
from mailpipe.triage.reader import Reader
from mailpipe.triage.render import header_fields, incident_lines, triage_card
from mailpipe.triage.rules import RuleSet
from mailpipe.triage.score import evaluate
from mailpipe.triage.work import Work, parsed_of, verdict_of
from mailpipe.worker import InThread, Stage

log = logging.getLogger("mailpipe.triage")

AUTH_TIMEOUT = 15.0
FALLBACK_WARNING_INTERVAL = timedelta(hours=1)  # the same fallback warned again at most this often
# DNS waits get threads of their own, shared by every Triage a reload builds: a slow resolver
# must not starve the store work and the rest of the default pool. Threads start on first use.
_AUTH_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="auth")


@functools.cache
def store_threads(writers: int) -> ThreadPoolExecutor:
    """The threads for the store-side stages of every message, apart from the default pool and
    the Maildir writer's thread (``deliver.maildir``), as many as the store has writers
    (``TriageStore.writers``); shared by every Triage a reload builds. Threads start on first use."""
    return ThreadPoolExecutor(max_workers=writers, thread_name_prefix="store")


class Triage:
    """The inbound stages with what they need: rules, roster, desk settings, store, clock."""

    def __init__(self, rules: RuleSet, agents: Sequence[Agent], desk: TriageConfig, store: TriageStore, hostname: str,
                 metrics: Metrics, deliverer: Deliverer, acknowledger: Acknowledger | None = None,
                 outbound: Spool | None = None, returned: Returned | None = None,
                 incidents: Incidents | None = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 model: Callable[[], UrgencyModel | None] = lambda: None, lead: str = "",
                 reader: Reader | None = None):
        self.metrics = metrics
        self.model = model  # the urgency model running now (a correction may have retrained it)
        self.reader = reader  # reads with it in its own process; without one, ``score`` reads in process
        self.lead = lead
        self.returned = returned
        self.incidents = incidents
        self.deliverer = deliverer
        self.acknowledger = acknowledger
        self.outbound = outbound
        self.rules = rules
        self.agents = tuple(agents)
        self._by_id = {agent.id: agent for agent in self.agents}
        self.desk = desk
        self.store = store
        self.hostname = hostname
        self.clock = clock
        self._warned: dict[str, tuple[datetime, int]] = {}  # fallback reason -> last warned, repeats since

    @property
    def executor(self) -> ThreadPoolExecutor:
        return store_threads(self.store.writers)

    @property
    def stages(self) -> tuple[tuple[str, Stage[Work]], ...]:
        return (
            ("route", self.route),
            ("parse", self.parse),
            ("authenticate", self.authenticate),
            ("predict", self.predict),
            ("profile", InThread(self.profile)),
            ("score", InThread(self.score)),
            ("assign", InThread(self.assign)),
            ("acknowledge", self.acknowledge),
            ("annotate", self.annotate),
        )

    async def route(self, work: Work) -> Work:
        """DMARC reports and bounces of our own mail go to ``monitors.returned``, which consumes
        them; everything else is customer mail and goes on to the stages below."""
        if self.returned is not None:
            await self.returned.route(work.message)
        return work

    def parse(self, work: Work) -> Work:
        return dataclasses.replace(work, parsed=parse(work.message.data))

    async def authenticate(self, work: Work) -> Work:
        """Bounded as a whole: slow DNS delays a message by at most AUTH_TIMEOUT, never holds it."""
        envelope, parsed = work.message.entry.envelope, parsed_of(work)
        try:
            verdict = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                _AUTH_THREADS, auth.verify, work.message.data, envelope.mail_from, envelope.peer, envelope.helo,
                parsed.sender), AUTH_TIMEOUT)
        except TimeoutError:
            from_domain = parsed.sender.rpartition("@")[2].lower()
            verdict = auth.Verdict("temperror", envelope.mail_from.rpartition("@")[2].lower(), (), "temperror", "",
                                   from_domain)
        return dataclasses.replace(work, auth=verdict)

    async def predict(self, work: Work) -> Work:
        """The urgency model's reading, made in its own process (``triage.reader``) while this
        process goes on with other messages; ``score`` hands it to the rules, or reads the text
        itself when that process could not (starting, loading a newer model, or gone)."""
        model = self.model()
        if model is None or self.reader is None or not (self.rules.explained or self.rules.passages):  # none asks
            return work
        parsed = parsed_of(work)
        text = clipped(document(parsed.subject, parsed.read_text, parsed.is_reply))  # all the model reads
        reading = await self.reader.read(model, text, self.rules.explained, self.rules.passages)
        return work if reading is None else dataclasses.replace(work, urgency=reading)

    def profile(self, work: Work) -> Work:
        parsed = parsed_of(work)
        sender = customer_address(work)
        profile = self.store.profile(sender, work.message.entry.received_at) if sender else None
        case = self.store.find_case(parsed.thread_ids, parsed.case_token, sender)
        replies = self.store.recent_replies(profile.customer.id) if profile else ()
        notes = self.store.case_notes(case.id) if case else ()
        return dataclasses.replace(work, profile=profile, thread_case=case.id if case else None,
                                   away=self.store.away(), replies=replies, notes=notes)

    def score(self, work: Work) -> Work:
        now = datetime.fromtimestamp(work.message.entry.received_at, UTC)
        active = self.incidents.active() if self.incidents else frozenset()
        context = triage_context(parsed_of(work), work.profile, now, self.desk, self.hostname, work.auth, active,
                                 self.model(), work.urgency)
        return dataclasses.replace(work, verdict=evaluate(self.rules, context))

    def assign(self, work: Work) -> Work:
        parsed, verdict = parsed_of(work), verdict_of(work)

        def decide(owner_now: str, load_now: Mapping[str, int]) -> tuple[tuple[str, str, str], ...]:
            """Made inside the store's transaction on the owner and load as they are there:
            another worker or daemon may have assigned meanwhile."""
            return assign(self.agents, previous_owner=owner_now, escalate=verdict.escalate, load=load_now,
                          away=work.away, now=self.clock(), desk=self.desk, lead=self.lead).reasons

        record = self.store.record_inbound(
            queue_id=work.message.id, address=customer_address(work), name=parsed.sender_name,
            message_id=parsed.message_id, subject=parsed.base_subject or parsed.subject, level=verdict.level,
            score=verdict.score, rules=verdict.summary(), case_id=work.thread_case, decide=decide,
            escalated_to=verdict.escalate or "", at=work.message.entry.received_at, language=parsed.language,
            autoreply_window=self._autoreply_window(work),
            document=clipped(document(parsed.subject, parsed.read_text, parsed.is_reply)),
            automatic=automatic(work))
        roles = {a.role: self._by_id.get(a.agent) for a in record.assignments}
        handler = roles.get("handler") or roles.get("owner") or self._by_id.get(record.case.owner)
        recipients = tuple(dict.fromkeys(a for a in (handler, roles.get("escalation")) if a is not None))
        return dataclasses.replace(work, record=record, recipients=recipients)

    def _autoreply_window(self, work: Work) -> float | None:
        """The acknowledgement window to take with a new case, unless this message gets none."""
        if self.acknowledger is None:
            return None
        if self.acknowledger.suppressed(work.message, parsed_of(work), work.auth) is not None:
            return None
        return self.acknowledger.settings.autoreply_window

    async def acknowledge(self, work: Work) -> Work:
        if self.acknowledger is None or work.record is None:
            return work
        owner = self._by_id.get(work.record.case.owner)
        if owner is None or self.acknowledger.withheld(work.message, parsed_of(work), work.auth, work.record):
            return work  # decided without a thread: most messages get no acknowledgement
        composed = await asyncio.to_thread(self.acknowledger.compose, work.message, parsed_of(work), work.record,
                                           owner, verdict_of(work).level)
        return dataclasses.replace(work, acknowledgement=composed)

    def annotate(self, work: Work) -> Work:
        fields, subject = header_fields(work, self.hostname, self._by_id, self.desk.subject_tags)
        return dataclasses.replace(work, fields=fields, subject=subject, card=self.card(work),
                                   authserv_id=self.hostname)

    def card(self, work: Work) -> bytes:
        """The triage card filed beside the original (``render.triage_card``)."""
        return triage_card(work, self.hostname, self._by_id, incident_lines(self.incidents, parsed_of(work)),
                           self.desk.timezone)

    async def hand_off(self, work: Work) -> None:
        """The original with our headers on top, then its triage card, to each recipient's
        mailbox in one hand-off per mailbox."""
        if not work.recipients:
            raise NoRecipients("triage chose no mailbox")
        if work.acknowledgement is not None and self.outbound is not None:
            ack = work.acknowledgement
            # Queued again only if it was never sent: a hand-off run again (after a crash, or a
            # mailbox that failed) may come after the send queue sent it and let it go.
            if not (work.message.entry.recovered and await asyncio.to_thread(self.store.sent_as, ack.queue_id)):
                await self.outbound.enqueue_once(ack.envelope, ack.data, ack.queue_id)
        message = work.message
        items = [(message, annotated(work))]
        if work.card:
            card = notice.derived(message, "T", work.card)
            items.append((card, card.data))
        for agent in work.recipients:
            await self.deliverer.deliver(agent, items)

    @staticmethod
    def summary(work: Work) -> dict[str, str]:
        return {"to": ",".join(a.id for a in work.recipients), "case": str(work.record.case.id) if work.record else "",
                "level": work.verdict.level if work.verdict else ""}

    def count(self, work: Work) -> None:
        """Metrics for a message handed to its mailboxes: cases opened, assignments by kind."""
        if work.record is None or work.verdict is None:
            return
        if work.record.new_case:
            self.metrics.cases_opened.labels(work.verdict.level).inc()
        for assignment in work.record.assignments:
            kind = {"handler": "cover", "escalation": "escalation", "fallback": "escalation"}.get(assignment.role) or (
                "sticky" if assignment.reason.startswith("sticky") else "least_loaded")
            agent = self._by_id.get(assignment.agent)
            if is_fallback(assignment.reason):
                self.metrics.assignment_fallbacks.labels(kind).inc()
                self._log_fallback(work.message.id, work.record.case.id, assignment.agent, assignment.reason)
                if assignment.role == "fallback":
                    continue
            self.metrics.assignments.labels(agent.tier if agent else "unknown", kind).inc()

    def _log_fallback(self, queue_id: str, case: int, agent: str, reason: str) -> None:
        """Every fallback has its line, a warning the first time its reason is seen in an hour and
        information the other times: a desk whose only agent is off duty at night falls back on
        every message, and a warning each time buries the warnings an operator must see."""
        now = self.clock()
        last, repeats = self._warned.get(reason, (None, 0))
        fields = {"queue_id": queue_id, "case": case, "agent": agent, "reason": reason}
        if last is not None and now - last < FALLBACK_WARNING_INTERVAL:
            self._warned[reason] = (last, repeats + 1)
            log.info("assignment fallback", extra=fields)
            return
        self._warned[reason] = (now, 0)
        log.warning("assignment fallback", extra={**fields, "repeated_since_warned": repeats})


def annotated(work: Work) -> bytes:
    """The original as its owners get it: our fields on top (``headers.with_headers``)."""
    fields = b"".join(headers.field(name, value) for name, value in work.fields)
    return headers.with_headers(work.message.data, fields, work.subject, work.authserv_id)


def automatic(work: Work) -> bool:
    """An auto-reply, list mail or a bounce (by its headers, RFC 3834): filed, never a case to work."""
    return suppression(parsed_of(work), work.message.entry.envelope.mail_from, ()) in ("automatic", "list", "bounce")


def customer_address(work: Work) -> str:
    """The customer is the From address; the envelope sender stands in when From is missing."""
    parsed = parsed_of(work)
    return canonical(parsed.sender or work.message.entry.envelope.mail_from)
