"""Mail that comes back to us: DMARC aggregate reports and bounces of our own mail.

The inbound queue's first stage (``triage.stages``, ``route``) hands every message here before
triage. Mail to the DMARC report addresses (rua) goes to the report parser
(``dmarc_reports``) and into the store; a bounce of our own mail (``bounces``; its Message-ID is
in the send queue's history in the store) is counted by provider and class with the reply
catalog, fed to the provider incidents, noted on the case the bounced message belongs to (an
agent's reply there becomes ``bounced`` and an answered case opens again), and told to the case
owner; a bounce of anything else is only counted as unmatched. Either way the message is done
with (``Consumed``) and never reaches agents as customer mail; anything else passes on to
triage untouched. Reads ``monitors.dmarc_report_addresses`` (as ``report_addresses``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mailpipe.addresses import canonical
from mailpipe.config import Agent
from mailpipe.deliver import Deliverer, notice
from mailpipe.errors import Consumed
from mailpipe.metrics import Metrics
from mailpipe.monitors import bounces, dmarc_reports
from mailpipe.monitors.incidents import Incidents
from mailpipe.outbound.classify import Catalog
from mailpipe.spool import Message
from mailpipe.store import CaseNotes


class Returned:
    """What a report or a bounce needs: the store, the owners' mailboxes, the reply catalog."""

    def __init__(self, store: CaseNotes, metrics: Metrics, deliverer: Deliverer, hostname: str, agents: Sequence[Agent],
                 report_addresses: Sequence[str] = (), catalog: Catalog | None = None,
                 incidents: Incidents | None = None):
        self.store = store
        self.metrics = metrics
        self.deliverer = deliverer
        self.hostname = hostname
        self._by_id = {agent.id: agent for agent in agents}
        self.report_addresses = frozenset(canonical(a) for a in report_addresses)
        self.catalog = catalog
        self.incidents = incidents

    async def route(self, message: Message) -> None:
        """Mail to the DMARC report addresses (rua) goes to the report parser and bounces of our
        own mail to the bounce parser, never to agents as customer mail."""
        envelope = message.entry.envelope
        if not self.report_addresses.intersection(canonical(r) for r in envelope.rcpt_tos):
            bounce = bounces.parse_bounce(message.data, envelope.mail_from) if self.catalog else None
            if bounce is not None:
                await self._bounced(message, bounce)
            return
        try:
            found = await dmarc_reports.read_reports(message.data)
        except dmarc_reports.ReportError as exc:
            self.metrics.dmarc_reports.labels("invalid").inc()
            raise Consumed(f"DMARC report address; unreadable report dropped: {exc}") from None
        at = message.entry.received_at
        for report in found:
            new = await asyncio.to_thread(dmarc_reports.store_report, self.store, report, at)
            self.metrics.dmarc_reports.labels("new" if new else "duplicate").inc()
        names = ", ".join(f"{r.org_name} {r.report_id} ({r.messages} messages)" for r in found)
        raise Consumed(f"DMARC aggregate report: {names}")

    async def _bounced(self, message: Message, bounce: bounces.Bounce) -> None:
        """Counts each failure by provider and class, notes it on the case the bounced message
        belongs to and tells the case owner; then the bounce is done with. A bounce of mail we
        never sent (forged, or misdirected) is only logged and counted as unmatched: it must not
        open incidents, page or boost cases."""
        assert self.catalog is not None
        original = bounce.original_message_id
        if not original or not await asyncio.to_thread(self.store.sent_by_us, original):
            self.metrics.bounces_unmatched.inc()
            raise Consumed(f"bounce of mail mailpipe did not send ({original or 'no Message-ID'}): ignored")
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
            at = message.entry.received_at
            noted = await asyncio.to_thread(self.store.add_case_note, case.id, "bounce", summary, message.id, at)
            fate = await asyncio.to_thread(self.store.set_fate, "bounced", summary, at,
                                           message_id=bounce.original_message_id)
            if fate is not None and fate.changed:
                self.metrics.reply_fates.labels("bounced").inc()
            if noted or message.entry.recovered:  # a crash may have come between note and notice
                owner = self._by_id.get(case.owner)
                if owner is not None:
                    thread = (fate.fate.answers, bounce.original_message_id) if fate else (bounce.original_message_id,)
                    await self._tell_owner(message, owner, case.id, thread, summary)
        raise Consumed(f"bounce of {bounce.original_message_id or 'an unknown message'}"
                       f"{f' (case #{case.id})' if case else ''}: {summary}")

    async def _tell_owner(self, message: Message, owner: Agent, case_id: int, thread: tuple[str, ...],
                          summary: str) -> None:
        """A note with the case token, threaded under the case's customer message and the reply."""
        body = (f"ケース #{case_id} のお客様宛てのメールが届きませんでした。お電話など別の手段でご連絡ください。\n"
                f"Mail to the customer of case #{case_id} bounced; please reach them another way.\n\n"
                + summary.replace("; ", "\n") + "\n")
        note = notice.compose(hostname=self.hostname, to=owner.address, subject=f"[#{case_id}] bounced", body=body,
                              message_id=f"{message.id}.bounce@{self.hostname}", about=thread,
                              at=message.entry.received_at)
        bounced = notice.derived(message, "B", note)
        await self.deliverer.deliver(owner, [(bounced, note)])
