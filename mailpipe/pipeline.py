"""What happens to an inbound message between the spool and the owners' mailboxes, in order.

The order lives in one table, ``Triage.stages``: parse → authenticate → profile → score →
assign → acknowledge → annotate. Pure stages are plain functions of ``Work``; the two that read
and write the store run in a thread. ``assign`` decides inside the transaction that records
customer, case, message and assignments, and the recipients come from what it stored, never
from a fresh decision, so a message triaged again after a crash goes to the same mailboxes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mailpipe import auth
from mailpipe.addresses import canonical
from mailpipe.config import Agent, TriageConfig
from mailpipe.deliver import Deliverer, headers, notice
from mailpipe.message import ParsedMessage, parse
from mailpipe.metrics import Metrics
from mailpipe.monitors import bounces, dmarc_reports
from mailpipe.monitors.incidents import MENTIONS, Incidents
from mailpipe.outbound.acknowledge import Acknowledgement, Acknowledger
from mailpipe.outbound.classify import Catalog
from mailpipe.spool import Message, Spool
from mailpipe.store import CustomerRecord, InboundRecord, Profile, Store
from mailpipe.triage.assign import assign
from mailpipe.triage.context import Context, History
from mailpipe.triage.hours import within_business_hours
from mailpipe.triage.rules import RuleSet
from mailpipe.triage.score import Verdict, evaluate
from mailpipe.worker import Consumed

TAGS = {"critical": "[URGENT]", "high": "[HIGH]"}
AUTH_TIMEOUT = 15.0
# DNS waits get threads of their own, shared by every Triage a reload builds: a slow resolver
# must not starve the store and Maildir work of the default pool. Threads start on first use.
_AUTH_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="auth")


@dataclass(frozen=True)
class Work:
    message: Message
    parsed: ParsedMessage | None = None
    auth: auth.Verdict | None = None
    profile: Profile | None = None
    away: frozenset[str] = frozenset()
    thread_case: int | None = None
    verdict: Verdict | None = None
    record: InboundRecord | None = None
    recipients: tuple[Agent, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    subject: str | None = None
    authserv_id: str = ""  # Authentication-Results claiming this id are ours alone
    card: bytes | None = None
    acknowledgement: Acknowledgement | None = None


Stage = Callable[[Work], Work | Awaitable[Work]]


class NoRecipients(Exception):
    """The stages ended without a mailbox to deliver to."""




class Triage:
    """The inbound stages with what they need: rules, roster, desk settings, store, clock."""

    def __init__(self, rules: RuleSet, agents: Sequence[Agent], desk: TriageConfig, store: Store, hostname: str,
                 metrics: Metrics, deliverer: Deliverer, acknowledger: Acknowledger | None = None,
                 outbound: Spool | None = None, report_addresses: Sequence[str] = (),
                 catalog: Catalog | None = None, incidents: Incidents | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.metrics = metrics
        self.catalog = catalog
        self.incidents = incidents
        self.report_addresses = frozenset(canonical(a) for a in report_addresses)
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

    @property
    def stages(self) -> tuple[tuple[str, Stage], ...]:
        return (
            ("route", self.route),
            ("parse", self.parse),
            ("authenticate", self.authenticate),
            ("profile", self.profile),
            ("score", self.score),
            ("assign", self.assign),
            ("acknowledge", self.acknowledge),
            ("annotate", self.annotate),
        )

    async def route(self, work: Work) -> Work:
        """Mail to the DMARC report addresses (rua) goes to the report parser and bounces of our
        own mail to the bounce parser, never to agents as customer mail."""
        envelope = work.message.entry.envelope
        if not self.report_addresses.intersection(canonical(r) for r in envelope.rcpt_tos):
            bounce = bounces.parse_bounce(work.message.data, envelope.mail_from) if self.catalog else None
            if bounce is not None:
                await self._bounced(work, bounce)
            return work
        try:
            found = await dmarc_reports.read_reports(work.message.data)
        except dmarc_reports.ReportError as exc:
            self.metrics.dmarc_reports.labels("invalid").inc()
            raise Consumed(f"DMARC report address; unreadable report dropped: {exc}") from None
        at = work.message.entry.received_at
        for report in found:
            new = await asyncio.to_thread(dmarc_reports.store_report, self.store, report, at)
            self.metrics.dmarc_reports.labels("new" if new else "duplicate").inc()
        names = ", ".join(f"{r.org_name} {r.report_id} ({r.messages} messages)" for r in found)
        raise Consumed(f"DMARC aggregate report: {names}")

    async def _bounced(self, work: Work, bounce: bounces.Bounce) -> None:
        """Counts each failure by provider and class, notes it on the case the bounced message
        belongs to and tells the case owner; then the bounce is done with."""
        assert self.catalog is not None
        lines = []
        for failure in bounce.failures:
            provider = self.catalog.provider(failure.remote_mta or None, failure.recipient.rpartition("@")[2])
            classification = self.catalog.classify(provider, failure.code, failure.text)
            self.metrics.bounces.labels(provider, classification.klass).inc()
            if self.incidents is not None:
                await asyncio.to_thread(self.incidents.observe, provider, classification.klass,
                                        f"{failure.code} {failure.text}", failure.recipient)
            meaning = f": {classification.meaning}" if classification.meaning else ""
            lines.append(f"{failure.recipient}: {failure.action} {failure.code} {failure.text}"
                         f" ({provider}, {classification.klass}{meaning})")
        case = (await asyncio.to_thread(self.store.find_case, (bounce.original_message_id,), None, "")
                if bounce.original_message_id else None)
        summary = "; ".join(lines) or "a bounce mailpipe could not read a recipient from"
        if case is not None:
            at = work.message.entry.received_at
            noted = await asyncio.to_thread(self.store.add_case_note, case.id, "bounce", summary, work.message.id, at)
            if noted or work.message.entry.recovered:  # a crash may have come between note and notice
                owner = self._by_id.get(case.owner)
                if owner is not None:
                    await self._tell_owner(work, owner, case.id, bounce, summary)
        raise Consumed(f"bounce of {bounce.original_message_id or 'an unknown message'}"
                       f"{f' (case #{case.id})' if case else ''}: {summary}")

    async def _tell_owner(self, work: Work, owner: Agent, case_id: int, bounce: bounces.Bounce, summary: str) -> None:
        body = (f"ケース #{case_id} のお客様宛てのメールが届きませんでした。お電話など別の手段でご連絡ください。\n"
                f"Mail to the customer of case #{case_id} bounced; please reach them another way.\n\n"
                + summary.replace("; ", "\n") + "\n")
        note = notice.compose(hostname=self.hostname, to=owner.address, subject=f"[#{case_id}] bounced", body=body,
                              message_id=f"{work.message.id}.bounce@{self.hostname}",
                              about=bounce.original_message_id, at=work.message.entry.received_at)
        bounced = notice.derived(work.message, "B", note)
        await self.deliverer.deliver(owner, [(bounced, note)])

    def parse(self, work: Work) -> Work:
        return dataclasses.replace(work, parsed=parse(work.message.data))

    async def authenticate(self, work: Work) -> Work:
        """Bounded as a whole: slow DNS delays a message by at most AUTH_TIMEOUT, never holds it."""
        envelope, parsed = work.message.entry.envelope, _parsed(work)
        try:
            verdict = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                _AUTH_THREADS, auth.verify, work.message.data, envelope.mail_from, envelope.peer, envelope.helo,
                parsed.sender), AUTH_TIMEOUT)
        except TimeoutError:
            from_domain = parsed.sender.rpartition("@")[2].lower()
            verdict = auth.Verdict("temperror", envelope.mail_from.rpartition("@")[2].lower(), (), "temperror", "",
                                   from_domain)
        return dataclasses.replace(work, auth=verdict)

    async def profile(self, work: Work) -> Work:
        return await asyncio.to_thread(self._profile, work)

    def _profile(self, work: Work) -> Work:
        parsed = _parsed(work)
        sender = customer_address(work)
        profile = self.store.profile(sender, work.message.entry.received_at) if sender else None
        case = self.store.find_case(parsed.thread_ids, parsed.case_token, sender)
        return dataclasses.replace(work, profile=profile, thread_case=case.id if case else None,
                                   away=self.store.away())

    def score(self, work: Work) -> Work:
        now = datetime.fromtimestamp(work.message.entry.received_at, UTC)
        active = self.incidents.active() if self.incidents else frozenset()
        context = triage_context(_parsed(work), work.profile, now, self.desk, self.hostname, work.auth, active)
        return dataclasses.replace(work, verdict=evaluate(self.rules, context))

    async def assign(self, work: Work) -> Work:
        return await asyncio.to_thread(self._assign, work)

    def _assign(self, work: Work) -> Work:
        parsed, verdict = _parsed(work), _verdict(work)

        def decide(owner_now: str, load_now: Mapping[str, int]) -> tuple[tuple[str, str, str], ...]:
            """Made inside the store's transaction on the owner and load as they are there:
            another worker or daemon may have assigned meanwhile."""
            return assign(self.agents, previous_owner=owner_now, escalate=verdict.escalate, load=load_now,
                          away=work.away, now=self.clock(), desk=self.desk).reasons

        record = self.store.record_inbound(
            queue_id=work.message.id, address=customer_address(work), name=parsed.sender_name,
            message_id=parsed.message_id, subject=parsed.base_subject or parsed.subject, level=verdict.level,
            score=verdict.score, rules=verdict.summary(), case_id=work.thread_case, decide=decide,
            escalated_to=verdict.escalate or "", at=work.message.entry.received_at, language=parsed.language,
            autoreply_window=self._autoreply_window(work))
        roles = {a.role: self._by_id.get(a.agent) for a in record.assignments}
        handler = roles.get("handler") or roles.get("owner") or self._by_id.get(record.case.owner)
        recipients = tuple(dict.fromkeys(a for a in (handler, roles.get("escalation")) if a is not None))
        return dataclasses.replace(work, record=record, recipients=recipients)

    def _autoreply_window(self, work: Work) -> float | None:
        """The acknowledgement window to take with a new case, unless this message gets none."""
        if self.acknowledger is None or self.acknowledger.suppressed(work.message, _parsed(work)) is not None:
            return None
        return self.acknowledger.settings.autoreply_window

    async def acknowledge(self, work: Work) -> Work:
        if self.acknowledger is None or work.record is None:
            return work
        owner = self._by_id.get(work.record.case.owner)
        decided = await asyncio.to_thread(self.acknowledger.decide, work.message, _parsed(work), work.record, owner,
                                          _verdict(work).level)
        return dataclasses.replace(work, acknowledgement=decided)

    def annotate(self, work: Work) -> Work:
        parsed, verdict, record = _parsed(work), _verdict(work), work.record
        assert record is not None
        owner = self._by_id.get(record.case.owner)
        customer = record.customer
        fields = [("Authentication-Results", work.auth.header(self.hostname))] if work.auth else []
        fields += [
            ("X-Mailpipe-Queue-Id", work.message.id),
            ("X-Mailpipe-Case", f"{record.case.id}{' (new)' if record.new_case else ''}"),
            ("X-Mailpipe-Urgency", f"{verdict.level} {verdict.score:g}"),
            ("X-Mailpipe-Rules", verdict.summary() or "none"),
            ("X-Mailpipe-Owner", f"{owner.id} ({owner.name}, {owner.phone})" if owner else record.case.owner),
            ("X-Mailpipe-Customer", customer_line(customer)),
        ]
        escalation = next((a for a in record.assignments if a.role == "escalation"), None)
        if escalation is not None:
            fields.append(("X-Mailpipe-Escalation", f"{verdict.escalate or 'escalated'}: {escalation.agent}"))
        subject = None
        if self.desk.subject_tags:
            subject = f"{TAGS.get(verdict.level, '')}[#{record.case.id}] {parsed.base_subject or parsed.subject}"
        card = triage_card(work, self.hostname, self._by_id, self._incident_lines(parsed))
        return dataclasses.replace(work, fields=tuple(fields), subject=subject, card=card,
                                   authserv_id=self.hostname)

    def _incident_lines(self, parsed: ParsedMessage) -> list[str]:
        """The active incidents of providers this message names, for the agent's card."""
        if self.incidents is None:
            return []
        text = parsed.subject + "\n" + parsed.new_text
        lines = []
        for provider in sorted(self.incidents.active()):
            record = self.incidents.describe(provider)
            if record is None or not MENTIONS[provider].search(text):
                continue
            since = datetime.fromtimestamp(record.started, UTC).strftime("%Y-%m-%d %H:%M UTC")
            lines.append(f"Incident: {provider} is refusing our mail since {since} ({record.klass}: {record.sample});"
                         f" {record.refusals} refusals, {len(record.customers)} customers affected"
                         " (mailpipe incidents)")
        return lines

    async def hand_off(self, work: Work) -> None:
        """The original with our headers on top, then its triage card, to each recipient's
        mailbox in one hand-off per mailbox."""
        if not work.recipients:
            raise NoRecipients("triage chose no mailbox")
        if work.acknowledgement is not None and self.outbound is not None:
            ack = work.acknowledgement
            await self.outbound.enqueue_once(ack.envelope, ack.data, ack.queue_id)
        message = work.message
        fields = b"".join(headers.field(name, value) for name, value in work.fields)
        items = [(message, headers.with_headers(message.data, fields, work.subject, work.authserv_id))]
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
            kind = {"handler": "cover", "escalation": "escalation"}.get(assignment.role) or (
                "sticky" if assignment.reason.startswith("sticky") else "least_loaded")
            agent = self._by_id.get(assignment.agent)
            self.metrics.assignments.labels(agent.tier if agent else "unknown", kind).inc()


def triage_context(parsed: ParsedMessage, profile: Profile | None, now: datetime, desk: TriageConfig,
                   authserv_id: str, verified: auth.Verdict | None = None,
                   incidents: frozenset[str] = frozenset()) -> Context:
    """What the rules see: the message, the customer and their history from the store, DMARC
    (verified now, or as our own earlier Authentication-Results recorded it) and the clock.
    Shared by the daemon and ``mailpipe score``."""
    customer, history = None, History()
    if profile is not None:
        customer = profile.customer
        open_since = profile.open_case.opened_at if profile.open_case else None
        history = History(tuple(datetime.fromtimestamp(t, UTC) for t in profile.contacts),
                          datetime.fromtimestamp(open_since, UTC) if open_since else None)
    dmarc = verified.dmarc if verified is not None else dmarc_verdict(parsed, authserv_id)
    return Context(parsed, now, customer=customer, history=history, dmarc=dmarc,
                   business_hours=within_business_hours(now, desk), incidents=incidents)


def customer_address(work: Work) -> str:
    """The customer is the From address; the envelope sender stands in when From is missing."""
    parsed = _parsed(work)
    return canonical(parsed.sender or work.message.entry.envelope.mail_from)


def _parsed(work: Work) -> ParsedMessage:
    assert work.parsed is not None, "stage order: parse first"
    return work.parsed


def _verdict(work: Work) -> Verdict:
    assert work.verdict is not None, "stage order: score before this"
    return work.verdict


def dmarc_verdict(parsed: ParsedMessage, authserv_id: str) -> str:
    """DMARC as recorded by an Authentication-Results header of our own authserv-id (RFC 8601:
    anybody else's claims are not to be trusted); "none" when there is no such verdict."""
    for value in parsed.headers.get("authentication-results", ()):
        server, _, results = value.partition(";")
        if server.strip().split()[0:1] != [authserv_id]:
            continue
        for result in ("fail", "pass"):
            if f"dmarc={result}" in results.lower():
                return result
    return "none"


def customer_line(c: CustomerRecord) -> str:
    """A customer on one line, the same in the X-Mailpipe-Customer header, the card and the CLI."""
    parts = [c.address]
    parts += [f"{label}={value}" for label, value in (("name", c.name), ("company", c.company), ("plan", c.plan),
                                                      ("phone", c.phone)) if value]
    if c.vip:
        parts.append("VIP")
    return "; ".join(parts)


def triage_card(work: Work, hostname: str, agents: dict[str, Agent], incidents: Sequence[str] = ()) -> bytes:
    """A short companion message filed next to the original in the agent's mailbox and threaded
    under it: any mail client shows the profile, history and verdict, and the original message
    stays byte for byte as the customer sent it."""
    parsed, verdict, record = _parsed(work), _verdict(work), work.record
    assert record is not None
    case, customer = record.case, record.customer
    lines = [f"Case #{case.id} ({'new' if record.new_case else 'continued'}) — {verdict.level} {verdict.score:g}",
             "", *incidents, *([""] if incidents else [])]
    for assignment in record.assignments:
        agent = agents.get(assignment.agent)
        who = f"{agent.name} ({agent.phone})" if agent else assignment.agent
        lines.append(f"{assignment.role:<10} {who} — {assignment.reason}")
    lines += ["", "Rules:"]
    lines += [f"  {hit.name}({hit.score:g}) {hit.description}: {hit.matched}" for hit in verdict.hits] or ["  none"]
    lines += ["", f"Customer: {customer_line(customer)}"]
    if customer.notes:
        lines.append(f"Notes: {customer.notes}")
    earlier = [c for c in (work.profile.recent_cases if work.profile else ()) if c.id != case.id][:5]
    lines += ["", "Earlier cases:" if earlier else "First contact: no earlier cases."]
    for previous in earlier:
        opened = datetime.fromtimestamp(previous.opened_at, UTC).strftime("%Y-%m-%d")
        lines.append(f"  #{previous.id} {opened} {previous.status:<8} {previous.level:<8} {previous.subject}")
    body = "\n".join(lines).replace("\n", "\r\n") + "\r\n"
    fields = [
        ("From", f"mailpipe <mailpipe@{hostname}>"),
        ("Subject", f"[#{case.id}] triage: {parsed.base_subject or parsed.subject}"),
        ("Date", format_datetime(datetime.fromtimestamp(work.message.entry.received_at, UTC))),
        ("Message-ID", f"<{work.message.id}.triage@{hostname}>"),
        ("Auto-Submitted", "auto-generated"),
        ("X-Mailpipe-Case", str(case.id)),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    if parsed.message_id:
        fields += [("In-Reply-To", f"<{parsed.message_id}>"), ("References", f"<{parsed.message_id}>")]
    return b"".join(headers.field(name, value) for name, value in fields) + b"\r\n" + body.encode()
