"""First response in seconds: an automatic acknowledgement when a case opens.

It tells the customer the case token, who owns the case with their phone number, and when to
expect an answer for the case's urgency level, and nothing the sender wrote. Only a sender whose
From is authenticated and aligned (DMARC pass, or SPF or DKIM passing for the From domain, by
our own verdict) gets one: otherwise a spammer could name any victim in From and have us mail
them, signed. RFC 3834 decides when to stay silent: never to
automatic mail (Auto-Submitted other than "no", Microsoft's X-Auto-Response-Suppress), bulk or
list mail (Precedence, List-Id, List-Unsubscribe), bounces (null sender, multipart/report),
no-reply senders, or our own addresses; and at most once per customer per ``autoreply_window``
(the store keeps the time). It is sent with a null envelope sender, so it can never bounce back
into a loop, marked ``Auto-Submitted: auto-replied``, threaded under the customer's message
and DKIM-signed like every other outgoing mail.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mailpipe.addresses import canonical, domain_of
from mailpipe.auth import Verdict
from mailpipe.config import Agent, OutboundConfig
from mailpipe.deliver import headers
from mailpipe.message import ParsedMessage
from mailpipe.metrics import Metrics
from mailpipe.outbound.signing import Signer
from mailpipe.queues import OUTBOUND
from mailpipe.spool import Envelope, Message
from mailpipe.store import InboundRecord

_NOREPLY = re.compile(r"^(no-?reply|do-?not-?reply|donotreply|mailer-daemon|postmaster|bounces?|notifications?)"
                      r"([+._-]|$)", re.IGNORECASE)


def suppression(parsed: ParsedMessage, mail_from: str, own: Iterable[str],
                verdict: Verdict | None = None) -> str | None:
    """Why this message must get no automatic answer (a metric label), or None; without a
    ``verdict`` (headers alone) the sender's authentication is not judged."""
    if not mail_from or canonical(mail_from).startswith("mailer-daemon@"):
        return "bounce"
    if "multipart/report" in parsed.header("content-type").lower():
        return "bounce"
    auto = parsed.header("auto-submitted").strip().lower()
    if auto and auto != "no":
        return "automatic"
    if re.search(r"\b(all|autoreply|oof)\b", parsed.header("x-auto-response-suppress"), re.IGNORECASE):
        return "automatic"
    if parsed.header("precedence").strip().lower() in ("bulk", "list", "junk"):
        return "list"
    if parsed.header("list-id") or parsed.header("list-unsubscribe") or parsed.header("list-post"):
        return "list"
    sender = canonical(parsed.sender or mail_from)
    if _NOREPLY.match(sender.partition("@")[0]) or _NOREPLY.match(canonical(mail_from).partition("@")[0]):
        return "noreply"
    if sender in {canonical(address) for address in own}:
        return "ours"
    if verdict is not None and not verdict.from_authenticated():
        return "unauthenticated"
    return None


def within(seconds: float, language: str) -> str:
    minutes, hours, days = round(seconds / 60), round(seconds / 3600), round(seconds / 86400)
    if language == "ja":
        if seconds < 3600:
            return f"{minutes}分以内"
        return f"{hours}時間以内" if seconds < 86400 else f"{days}日以内"
    if seconds < 3600:
        return f"within {minutes} minute{'s' if minutes != 1 else ''}"
    if seconds < 86400:
        return f"within {hours} hour{'s' if hours != 1 else ''}"
    return f"within {days} day{'s' if days != 1 else ''}"


def acknowledgement(*, parsed: ParsedMessage, case_id: int, owner: Agent, language: str, support_address: str,
                    customer: str, response_time: float, hostname: str, queue_id: str, now: float) -> bytes:
    """Nothing the sender wrote is echoed (no display name, no subject): whatever a spammer puts
    there would otherwise go out under our signature to whoever they name in From."""
    token = f"[#{case_id}]"
    when = within(response_time, language)
    if language == "ja":
        lines = ["お客様", "", f"お問い合わせありがとうございます。受付番号 {token} で承りました。",
                 f"担当の {owner.name}（{owner.phone}）より、{when}にご連絡いたします。",
                 "お急ぎの場合は、お電話でご連絡ください。", "",
                 f"このメールは自動送信です。ご返信の際は件名の {token} をそのまま残してください。"]
        title = f"{token} お問い合わせを受け付けました"
    else:
        lines = ["Hello,", "", f"Thank you for contacting us. Your case number is {token}.",
                 f"{owner.name} ({owner.phone}) owns your case and will answer {when}.",
                 "If it is urgent, please call.", "",
                 f"This message was sent automatically. Please keep {token} in the subject when you reply."]
        title = f"{token} We received your message"
    body = base64.encodebytes(("\r\n".join(lines) + "\r\n").encode("utf-8")).replace(b"\n", b"\r\n")
    fields = [
        ("From", support_address), ("To", customer), ("Subject", title),
        ("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
        ("Message-ID", f"<{queue_id}.ack@{hostname}>"), ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "base64"),
    ]
    if parsed.message_id:
        fields += [("In-Reply-To", f"<{parsed.message_id}>"), ("References", f"<{parsed.message_id}>")]
    return b"".join(headers.field(name, value) for name, value in fields) + b"\r\n" + body


@dataclass(frozen=True)
class Acknowledgement:
    queue_id: str
    envelope: Envelope
    data: bytes


class Acknowledger:
    """Decides and writes the acknowledgement of a new case; the customer's window is taken in
    the store with the case (``suppressed`` says whether to ask for it), and the inbound hand-off
    queues the acknowledgement for sending."""

    def __init__(self, settings: OutboundConfig, support_addresses: Sequence[str], agents: Sequence[Agent],
                 signer: Signer, hostname: str, metrics: Metrics):
        self.settings = settings
        self.signer = signer
        self.hostname = hostname
        self.metrics = metrics
        self._support = tuple(support_addresses)
        self._own = (*support_addresses, *(agent.address for agent in agents))

    def suppressed(self, message: Message, parsed: ParsedMessage, verdict: Verdict | None) -> str | None:
        """Why this message gets no acknowledgement whatever the window says, or None."""
        if not self.settings.autoreply:
            return "disabled"
        return suppression(parsed, message.entry.envelope.mail_from, self._own, verdict)

    def withheld(self, message: Message, parsed: ParsedMessage, verdict: Verdict | None,
                 record: InboundRecord) -> bool:
        """Whether this message gets no acknowledgement (counted by reason when it had a case
        to acknowledge): known without composing or signing, so most messages need no thread.
        From what was recorded, so asking again for the same message after a crash gives the
        same answer and the acknowledgement is queued once."""
        if not record.new_case:
            return True
        reason = self.suppressed(message, parsed, verdict) or (None if record.autoreply else "recent")
        if reason is not None:
            self.metrics.autoreplies.labels(reason).inc()
            return True
        return False

    def compose(self, message: Message, parsed: ParsedMessage, record: InboundRecord, owner: Agent,
                level: str) -> Acknowledgement:
        """The signed acknowledgement of a message ``withheld`` let through. Signing makes it
        worth a thread."""
        envelope = message.entry.envelope
        ours = {canonical(a) for a in self._support}
        support = next((r for r in envelope.rcpt_tos if canonical(r) in ours), self._support[0])
        data = acknowledgement(
            parsed=parsed, case_id=record.case.id, owner=owner, language=record.case.language or parsed.language,
            support_address=support, customer=record.customer.address,
            response_time=getattr(self.settings.response_times, level), hostname=self.hostname,
            queue_id=message.id, now=message.entry.received_at)
        signed = self.signer.sign(data, domain_of(support))
        onward = Envelope("", (record.customer.address,), "", "", OUTBOUND.name)
        self.metrics.autoreplies.labels("queued").inc()
        return Acknowledgement(f"{message.id}-ack", onward, signed)
