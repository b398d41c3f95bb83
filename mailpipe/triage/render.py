"""What an agent sees of triage: our header fields on the original, and the triage card.

``header_fields`` is what the ``annotate`` stage puts on top of the customer's message
(Authentication-Results under our authserv-id, ``X-Mailpipe-Queue-Id``, ``-Case``,
``-Urgency``, ``-Rules``, ``-Owner``, ``-Customer``, ``-Escalation``, ``-Fallback``) and the tagged subject
(``[URGENT][#12] …``, the customer's own subject behind it); ``triage_card`` is the companion
message filed beside it. The original bytes are never changed here: the deliverer puts the
fields on top. ``customer_line`` is the one way a customer is written on one line, in the
header, the card and ``mailpipe cases show``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

from mailpipe.addresses import domain_of
from mailpipe.config import Agent
from mailpipe.deliver import headers
from mailpipe.deliver.headers import TAGS
from mailpipe.message import ParsedMessage
from mailpipe.monitors.incidents import Incidents
from mailpipe.providers import MENTIONS
from mailpipe.store import CustomerRecord, ReplyFate
from mailpipe.triage.assign import is_fallback
from mailpipe.triage.hours import desk_time
from mailpipe.triage.work import Work, parsed_of, verdict_of

# A triage card's Message-ID carries the queue id of the message it is about: a card an agent
# passes on to the desk stands for that message (``desk.forwarded``), and one attached to a reply
# is held (``outbound.replies``).
CARD_ID = re.compile(r"<([^<>\s@]+)\.triage@[^<>\s]+>")


def card_id(queue_id: str, hostname: str) -> str:
    return f"<{queue_id}.triage@{hostname}>"


def header_fields(work: Work, hostname: str, agents: dict[str, Agent],
                  subject_tags: bool) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The X-Mailpipe-* fields (with our Authentication-Results) to put on top of the original,
    and the subject with the urgency tag and case token when the desk wants ``subject_tags``."""
    parsed, verdict, record = parsed_of(work), verdict_of(work), work.record
    assert record is not None
    owner = agents.get(record.case.owner)
    customer = record.customer
    fields = [("Authentication-Results", work.auth.header(hostname))] if work.auth else []
    fields += [
        ("X-Mailpipe-Queue-Id", work.message.id),
        ("X-Mailpipe-Case", f"{record.case.id}{' (new)' if record.new_case else ''}"),
        ("X-Mailpipe-Urgency", f"{verdict.level} {verdict.score:g}"),
        ("X-Mailpipe-Rules", verdict.summary() or "none"),
        ("X-Mailpipe-Owner", owner_value(owner) if owner else record.case.owner),
        ("X-Mailpipe-Customer", customer_line(customer)),
    ]
    escalation = next((a for a in record.assignments if a.role == "escalation"), None)
    if escalation is not None:
        fields.append(("X-Mailpipe-Escalation", f"{verdict.escalate or 'escalated'}: {escalation.agent}"))
    fields += [("X-Mailpipe-Fallback", f"{a.role} {a.agent}: {a.reason}") for a in record.assignments
               if is_fallback(a.reason)]
    subject = tagged_subject(parsed.subject, verdict.level, record.case.id) if subject_tags else None
    return tuple(fields), subject


def owner_value(owner: Agent) -> str:
    """``yamada 03-1234-5678 山田 太郎``: the id and the phone in plain ASCII first, for mail
    filters, then the name, which ``headers.field`` encodes as a word of its own (RFC 2047) when
    it is not ASCII — never glued to punctuation a filter would have to see through."""
    return " ".join(part for part in (owner.id, owner.phone, owner.name) if part)


def tagged_subject(subject: str, level: str, case_id: int) -> str:
    """The customer's subject as written ("Re:" and all) behind the urgency tag and the case
    token; a subject that already carries this case's token gets only the urgency tag."""
    token = f"[#{case_id}]"
    tag = TAGS.get(level, "") + ("" if token in subject else token)
    return f"{tag} {subject}".strip() if tag else subject


def incident_lines(incidents: Incidents | None, parsed: ParsedMessage) -> list[str]:
    """The active incidents of providers this message names, for the agent's card."""
    if incidents is None:
        return []
    text = parsed.subject + "\n" + parsed.read_text
    lines = []
    for provider in sorted(incidents.active()):
        record = incidents.describe(provider)
        if record is None or not MENTIONS[provider].search(text):
            continue
        since = datetime.fromtimestamp(record.started, UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"Incident: {provider} is refusing our mail since {since} ({record.klass}: {record.sample});"
                     f" {record.refusals} refusals, {len(record.customers)} customers affected"
                     " (mailpipe incidents)")
    return lines


def customer_line(c: CustomerRecord) -> str:
    """A customer on one line, the same in the X-Mailpipe-Customer header, the card and the CLI."""
    parts = [c.address]
    parts += [f"{label}={value}" for label, value in (("name", c.name), ("company", c.company), ("plan", c.plan),
                                                      ("phone", c.phone)) if value]
    if c.vip:
        parts.append("VIP")
    return headers.printable("; ".join(parts))


def fate_line(reply: ReplyFate, zone: str) -> str:
    """What became of a reply, on one line, the same in the card and ``mailpipe cases show``:
    ``sent 2026-11-30 09:05 JST: accepted by mx.example.com (250)``."""
    if not reply.fate:
        return "recorded before mailpipe kept replies' fates"
    return f"{reply.fate} {desk_time(reply.at, zone)}" + (f": {reply.detail}" if reply.detail else "")


def triage_card(work: Work, hostname: str, agents: dict[str, Agent], incidents: Sequence[str] = (),
                zone: str = "Asia/Tokyo") -> bytes:
    """A short companion message filed next to the original in the agent's mailbox and threaded
    under it: any mail client shows the profile, history and verdict, and the original message
    stays byte for byte as the customer sent it."""
    parsed, verdict, record = parsed_of(work), verdict_of(work), work.record
    assert record is not None
    case, customer = record.case, record.customer
    lines = [f"Case #{case.id} ({'new' if record.new_case else 'continued'}) — {verdict.level} {verdict.score:g}",
             "", *incidents, *([""] if incidents else [])]
    if record.new_case and case.status == "closed":
        lines += ["Filed closed: an automatic message (auto-reply, list mail or bounce), in nobody's load.",
                  f"Reopen: mailpipe cases reopen {case.id}", ""]
    for assignment in record.assignments:
        agent = agents.get(assignment.agent)
        who = f"{agent.name} ({agent.phone})" if agent else assignment.agent
        lines.append(f"{assignment.role:<10} {who} — {assignment.reason}")
    lines += ["", "Rules:"]
    lines += [f"  {hit.name}({hit.score:g}) {hit.description}: {hit.matched}" for hit in verdict.hits] or ["  none"]
    desk = domain_of(work.message.entry.envelope.rcpt_tos[0]) if work.message.entry.envelope.rcpt_tos else hostname
    lines += ["", f"Urgency wrong? Forward this card to urgency+LEVEL@{desk} (critical, high, normal, low).",
              "", f"Customer: {customer_line(customer)}"]
    if customer.notes:
        lines.append(f"Notes: {customer.notes}")
    if work.replies:
        lines += ["", "Our latest replies to this customer:"]
        lines += [f"  #{r.case_id} {r.agent:<10} {r.subject} — {fate_line(r, zone)}" for r in work.replies]
    if work.notes:
        lines += ["", f"Notes on case #{case.id}:"]
        lines += [f"  {desk_time(n.at, zone)} {n.kind}: {n.text}" for n in work.notes]
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
        ("Message-ID", card_id(work.message.id, hostname)),
        ("Auto-Submitted", "auto-generated"),
        ("X-Mailpipe-Case", str(case.id)),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    if parsed.message_id:
        fields += [("In-Reply-To", f"<{parsed.message_id}>"), ("References", f"<{parsed.message_id}>")]
    return b"".join(headers.field(name, value) for name, value in fields) + b"\r\n" + body.encode()
