"""The inbound (port 25) policy: whose mail we take, and the durable write before the 250.

Recipients must be one of the configured support addresses or postmaster (RFC 5321 4.5.1);
any other address in our domains is unknown (``550 5.1.1``) and any other domain is relaying
(``550 5.7.1``). A message with NUL bytes or bare CR/LF line ends is refused: both are illegal,
and bare line ends are how SMTP smuggling hides a second message inside the first. Everything
else is spooled as received, with our ``Received:`` line on top, and acknowledged only after the
spool said it is on disk.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from email.utils import formatdate

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailpipe.addresses import canonical, domain_of
from mailpipe.config import InboundConfig
from mailpipe.metrics import Metrics
from mailpipe.queues import INBOUND
from mailpipe.smtp import replies
from mailpipe.spool import Envelope as SpoolEnvelope
from mailpipe.spool import Spool, new_queue_id

log = logging.getLogger("mailpipe.smtp")


@dataclass(frozen=True)
class RecipientPolicy:
    addresses: frozenset[str]
    domains: frozenset[str]
    max_recipients: int

    @classmethod
    def from_config(cls, inbound: InboundConfig) -> RecipientPolicy:
        return cls(frozenset(canonical(a) for a in inbound.addresses),
                   frozenset(d.casefold() for d in inbound.domains), inbound.max_recipients)

    def refusal(self, address: str) -> str | None:
        """None when we take mail for ``address``, else the reply that says why not."""
        wanted = canonical(address)
        if wanted == "postmaster":
            return None
        domain = domain_of(wanted)
        if domain not in self.domains:
            return replies.RELAY_DENIED
        if wanted in self.addresses or wanted.partition("@")[0] == "postmaster":
            return None
        return replies.UNKNOWN_RECIPIENT


def content_refusal(data: bytes) -> str | None:
    if b"\0" in data:
        return replies.NUL_BYTES
    # Every CR must start a CRLF and every LF end one: three C-speed counts instead of a regex.
    pairs = data.count(b"\r\n")
    if data.count(b"\r") != pairs or data.count(b"\n") != pairs:
        return replies.BARE_LINE_END
    return None


def received_header(session: Session, envelope: Envelope, queue_id: str, hostname: str) -> bytes:
    """The trace line RFC 5321 4.4 requires of every SMTP server that accepts a message, with
    the protocol names of RFC 3848 (ESMTPS: TLS, ESMTPA: authenticated)."""
    peer_ip = session.peer[0] if session.peer else "unknown"
    helo = _printable(session.host_name or "unknown")
    protocol = "ESMTP" if session.extended_smtp else "SMTP"
    if session.ssl is not None:
        protocol += "S"
    if session.authenticated:
        protocol += "A"
    for_clause = f"\r\n\tfor <{_printable(envelope.rcpt_tos[0])}>" if len(envelope.rcpt_tos) == 1 else ""
    line = (f"Received: from {helo} ([{peer_ip}])\r\n\tby {hostname} (mailpipe) with {protocol} "
            f"id {queue_id}{for_clause};\r\n\t{formatdate(localtime=True)}\r\n")
    return line.encode("utf-8")


def _printable(text: str) -> str:
    """Client-supplied text in a header we write: no line breaks, no control characters."""
    return "".join(ch for ch in text if ch.isprintable()).replace(" ", "")[:255]


class InboundHandler:
    def __init__(self, policy: RecipientPolicy, spool: Spool, metrics: Metrics, hostname: str,
                 listener: str = INBOUND.name):
        self.policy = policy
        self.hostname = hostname
        self._spool = spool
        self._metrics = metrics
        self._listener = listener

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        refusal = self.policy.refusal(address)
        if refusal is not None:
            log.info("recipient refused", extra={"peer": session.peer[0], "rcpt": address,
                                                 "reply": refusal[:9]})
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    def refusal(self, session: Session, envelope: Envelope, data: bytes) -> str | None:
        """Why the message as a whole is refused, or None."""
        return content_refusal(data)

    def queue_for(self, envelope: Envelope) -> str:
        """The queue a message of this listener goes to."""
        return self._listener

    def submitter(self, session: Session) -> str:
        return ""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        data: bytes = envelope.original_content or b""
        refusal = self.refusal(session, envelope, data)
        if refusal is not None:
            self._metrics.messages.labels(self._listener, "rejected").inc()
            log.warning("message refused", extra={"peer": session.peer[0], "reply": refusal})
            return refusal
        queue_id = new_queue_id()
        stored = received_header(session, envelope, queue_id, self.hostname) + data
        spool_envelope = SpoolEnvelope(
            mail_from=envelope.mail_from or "", rcpt_tos=tuple(envelope.rcpt_tos),
            peer=session.peer[0] if session.peer else "", helo=session.host_name or "",
            listener=self.queue_for(envelope), submitter=self.submitter(session))
        try:
            await self._spool.enqueue(spool_envelope, stored, queue_id=queue_id)
        except sqlite3.Error as exc:  # disk full, read-only, corrupt: the spool says why, no traceback
            self._metrics.messages.labels(self._listener, "failed").inc()
            log.error("spool write failed", extra={"queue_id": queue_id, "error": f"{type(exc).__name__}: {exc}"})
            return replies.SPOOL_FAILED
        except Exception:
            self._metrics.messages.labels(self._listener, "failed").inc()
            log.exception("spool write failed", extra={"queue_id": queue_id})
            return replies.SPOOL_FAILED
        self._metrics.messages.labels(self._listener, "queued").inc()
        self._metrics.received_bytes.labels(self._listener).inc(len(stored))
        self._metrics.accept_seconds.labels(self._listener).observe(time.perf_counter() - started)
        log.info("queued", extra={"queue_id": queue_id, "from": envelope.mail_from,
                                  "to": ",".join(envelope.rcpt_tos), "size": len(stored),
                                  "peer": session.peer[0]})
        return replies.QUEUED.format(queue_id=queue_id)

    async def handle_exception(self, error: Exception) -> str:
        """Never a traceback to a peer: log it here, answer with a plain temporary failure."""
        log.error("session error", exc_info=error)
        return "451 4.3.0 Internal error, try again later"

