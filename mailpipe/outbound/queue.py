"""The send queue's hand-off: one attempt per claimed message, then each recipient's fate.

A message in the ``outbound`` queue is final bytes (stamped and signed) for the recipients of
one domain. After an attempt: accepted recipients are done; a permanent refusal, or temporary
ones that outlived ``max_lifetime``, produce one DSN to the sending agent's mailbox (null
senders, like our automatic acknowledgements, get none: RFC 3464 2.2); recipients still
deferred are retried alone (``PartlyDeferred``) with the worker's exponential backoff; a message
all of whose recipients refused is done with as ``Refused`` (counted so, never as delivered).
What became of an agent's reply in a case (sent, deferred, bounced) goes on the case
(``Fates``), and a DSN about such a reply carries the case token, threads under the case and
goes to the case owner as well. Every
reply is counted by provider and class, and a reply the catalog does not know from a known
provider is logged with its full text — the earliest sign of a provider's rule change. The
monitors that watch accepted mail and refusals are handed in (``Traffic``, ``Incidents``): the
send queue does not import them. Before each attempt the Message-ID goes into the store's
history of sent mail (``SentStore``): only bounces naming one of those count.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from mailpipe.addresses import canonical, domain_of
from mailpipe.config import Agent, OutboundConfig
from mailpipe.deliver import Deliverer, PartlyDeferred, headers, notice
from mailpipe.errors import Refused
from mailpipe.metrics import Metrics
from mailpipe.outbound import dsn
from mailpipe.outbound.classify import ACCEPTED, CLASSES, UNKNOWN
from mailpipe.outbound.fates import Fates
from mailpipe.outbound.send import Attempt, Reply, Transport
from mailpipe.spool import Message
from mailpipe.store import FateChange, SentStore

log = logging.getLogger("mailpipe.outbound")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(?:\r\n[ \t]+)?<([^<>\s]+)>", re.IGNORECASE | re.MULTILINE)


class Traffic(Protocol):
    """What watches the mail providers accepted (``monitors.traffic.Traffic``)."""

    def observe(self, provider: str, tls: bool, raw: bytes) -> None: ...


class Incidents(Protocol):
    """What counts refusals into provider incidents (``monitors.incidents.Incidents``)."""

    def observe(self, provider: str, klass: str, reply: str, customer: str) -> None: ...


class SendQueue:
    def __init__(self, transport: Transport, settings: OutboundConfig, agents: Sequence[Agent], mailboxes: Deliverer,
                 reporting_mta: str, metrics: Metrics, traffic: Traffic, incidents: Incidents | None = None,
                 fates: Fates | None = None, clock: Callable[[], float] = time.time,
                 sent: SentStore | None = None):
        self.transport = transport
        self.fates = fates
        self.sent = sent
        self.traffic = traffic
        self.incidents = incidents
        self.settings = settings
        self.mailboxes = mailboxes
        self.reporting_mta = reporting_mta
        self.metrics = metrics
        self._clock = clock
        self._agents = {agent.id: agent for agent in agents}
        self._by_address = {canonical(agent.address): agent for agent in agents}
        for provider in transport.catalog.provider_names:
            metrics.outbound_connection_failures.labels(provider)
            for klass in (ACCEPTED, UNKNOWN, *CLASSES):
                metrics.outbound_replies.labels(provider, klass)
                metrics.outbound_deferrals.labels(provider, klass)
                metrics.bounces.labels(provider, klass)

    async def hand_off(self, message: Message) -> None:
        envelope = message.entry.envelope
        domain = domain_of(envelope.rcpt_tos[0])
        message_id = _message_id(message.data)
        if self.sent is not None and message_id:
            await asyncio.to_thread(self.sent.record_sent, message_id, message.id, self._clock())
        attempt = await self.transport.send(envelope.mail_from, domain, envelope.rcpt_tos, message.data)
        self._count(message, attempt)
        if self.incidents is not None:
            for recipient, reply in attempt.replies.items():
                if not reply.accepted and reply.classification is not None:
                    await asyncio.to_thread(self.incidents.observe, attempt.provider, reply.classification.klass,
                                            str(reply), recipient)
        accepted = [reply for reply in attempt.replies.values() if reply.accepted]
        failed = {r: reply for r, reply in attempt.replies.items() if reply.permanent}
        deferred = {r: reply for r, reply in attempt.replies.items() if not reply.accepted and not reply.permanent}
        expired = bool(deferred) and self._clock() - message.entry.received_at > self.settings.max_lifetime
        if expired:
            failed.update(deferred)
            deferred = {}
        change = None
        if self.fates is not None:
            if accepted:
                change = await self.fates.record(message, "sent", f"accepted by {accepted[0].host or 'the server'}"
                                                 f" ({accepted[0].code})")
            if failed or deferred:
                fate = "bounced" if failed else "deferred"
                change = await self.fates.record(message, fate, "; ".join(
                    f"{recipient}: {reply}" for recipient, reply in (failed or deferred).items()))
        if failed:
            await self._report(message, failed, expired, change)
        if deferred:
            first = next(iter(deferred.values()))
            klass = first.classification.klass if first.classification else UNKNOWN
            raise PartlyDeferred(str(first), list(deferred), {"provider": attempt.provider, "class": klass})
        if failed and not any(reply.accepted for reply in attempt.replies.values()):
            raise Refused(f"{len(failed)} recipient(s) refused")

    def _count(self, message: Message, attempt: Attempt) -> None:
        if not attempt.connected:
            self.metrics.outbound_connection_failures.labels(attempt.provider).inc()
        if any(reply.accepted for reply in attempt.replies.values()):
            self.traffic.observe(attempt.provider, attempt.tls, message.data)
        for recipient, reply in attempt.replies.items():
            classification = reply.classification
            klass = classification.klass if classification else UNKNOWN
            self.metrics.outbound_replies.labels(attempt.provider, klass).inc()
            if not reply.accepted and not reply.permanent:
                self.metrics.outbound_deferrals.labels(attempt.provider, klass).inc()
            if reply.accepted:
                self.metrics.outbound_delivery_seconds.labels(attempt.provider).observe(
                    max(0.0, self._clock() - message.entry.received_at))
                log.info("sent", extra={"queue_id": message.id, "to": recipient, "provider": attempt.provider,
                                        "reply": str(reply)})
            elif klass == UNKNOWN:
                log.warning("unknown reply from a known provider: add it to the reply catalog", extra={
                    "queue_id": message.id, "to": recipient, "provider": attempt.provider, "reply": str(reply)})
            elif reply.permanent:  # a deferral is logged once, by the worker, with its delay
                log.warning("refused", extra={
                    "queue_id": message.id, "to": recipient, "provider": attempt.provider, "class": klass,
                    "meaning": classification.meaning if classification else "", "reply": str(reply)})

    async def _report(self, message: Message, failed: Mapping[str, Reply], expired: bool,
                      change: FateChange | None) -> None:
        """A DSN to the sending agent and, for a reply in a case, a copy to the case owner:
        with the case token, threaded under the customer's message and the reply."""
        entry = message.entry
        agent = self._agents.get(entry.envelope.submitter) or self._by_address.get(canonical(entry.envelope.mail_from))
        if agent is None or not entry.envelope.mail_from:
            log.warning("undeliverable, nobody to notify",
                        extra={"queue_id": message.id, "to": ",".join(failed), "sender": entry.envelope.mail_from})
            return
        now = self._clock()
        case = change.case.id if change else None
        thread = (change.fate.answers, change.fate.message_id) if change else ()
        report = dsn.report(reporting_mta=self.reporting_mta, agent_address=agent.address, original=message.data,
                            failed=failed, queue_id=message.id, arrival=entry.received_at, now=now, expired=expired,
                            case_id=case, thread=thread)
        # Its own id per attempt, so that a repeat of this hand-off after a crash files it once.
        returned = notice.derived(message, f"D{entry.attempts}", report)
        told = [agent]
        owner = self._agents.get(change.case.owner) if change else None
        if owner is not None and owner != agent:
            told.append(owner)
        for someone in told:
            await self.mailboxes.deliver(someone, [(returned, report)])
        self.metrics.outbound_dsns.labels("failed").inc()
        log.warning("delivery status notification", extra={"queue_id": message.id, "agent": agent.id,
                                                            "to": ",".join(failed), "expired": expired,
                                                            "case": case or "", "told": ",".join(a.id for a in told)})

    @staticmethod
    def summary(message: Message) -> dict[str, str]:
        return {"to": ",".join(message.entry.envelope.rcpt_tos)}


def _message_id(raw: bytes) -> str:
    """The Message-ID (without <>) a bounce of this mail will quote, or ""."""
    found = _MESSAGE_ID.search(headers.split(raw)[0])
    return found[1].decode("ascii", "replace") if found else ""
