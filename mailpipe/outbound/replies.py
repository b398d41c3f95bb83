"""What happens to an agent's reply between the submission 250 and the send queue, in order.

``Replies.stages``: parse → thread → guard → stamp → sign → record. ``parse`` reads the header fields
(the body only when a reply outside any case needs its language). ``thread`` finds the case (the
reply's In-Reply-To/References, or its ``[#N]`` token for one of its recipients) and the
customer message it answers; ``guard`` holds a second answer to the same customer message by
another agent within ``double_reply_window`` (Mail Dealer's double-reply guard), records it on
the case as ``held`` with the reason and tells its author (desk time, threaded under the case),
unless an operator released it; ``stamp`` adds the case owner's name and phone (the author's
own for mail outside any case); ``sign`` adds DKIM last; ``record`` records the reply in the
case as ``queued`` (the send queue records the rest of its fate; the case is answered only when
the customer's side accepts it). The hand-off moves the message, in one spool commit, into the
``outbound`` queue as one entry per recipient domain: the commit alone, which the worker awaits
with the message's slot free (``Route.moves_on``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mailpipe.addresses import domain_of
from mailpipe.config import Agent, OutboundConfig
from mailpipe.deliver import Deliverer, headers, notice
from mailpipe.errors import Held
from mailpipe.message import ParsedMessage, attached, parse
from mailpipe.metrics import Metrics
from mailpipe.offload import Offload
from mailpipe.outbound.footer import render
from mailpipe.outbound.signing import Signer
from mailpipe.outbound.stamp import Stamped, stamp
from mailpipe.queues import OUTBOUND
from mailpipe.spool import Message, Spool
from mailpipe.store import CaseRecord, ReplyStore
from mailpipe.triage.hours import desk_time
from mailpipe.triage.render import CARD_ID

log = logging.getLogger("mailpipe.outbound")


@dataclass(frozen=True)
class ReplyWork:
    message: Message
    parsed: ParsedMessage | None = None
    case: CaseRecord | None = None
    answers: str = ""  # Message-ID of the customer message this reply answers
    stamped: Stamped | None = None
    data: bytes = b""


class Replies:
    def __init__(self, agents: Sequence[Agent], settings: OutboundConfig, double_reply_window: float, store: ReplyStore,
                 signer: Signer, signing: Offload, spool: Spool, mailboxes: Deliverer, hostname: str, metrics: Metrics,
                 timezone: str = "Asia/Tokyo", desk_domain: str = "", clock: Callable[[], float] = time.time):
        self.settings = settings
        self.timezone = timezone
        self.desk_domain = desk_domain  # where desk commands are addressed (release+N@)
        self.window = double_reply_window
        self.store = store
        self.signer = signer
        self.signing = signing
        self.spool = spool
        self.mailboxes = mailboxes
        self.hostname = hostname
        self.metrics = metrics
        self.clock = clock
        self._agents = {agent.id: agent for agent in agents}

    @property
    def stages(self) -> tuple[tuple[str, Callable[[ReplyWork], ReplyWork | Awaitable[ReplyWork]]], ...]:
        return (("parse", self.parse), ("thread", self.thread), ("guard", self.guard), ("stamp", self.stamp),
                ("sign", self.sign_off_loop), ("record", self.record))

    def parse(self, work: ReplyWork) -> ReplyWork:
        return dataclasses.replace(work, parsed=header_fields(work.message.data))

    async def thread(self, work: ReplyWork) -> ReplyWork:
        return await asyncio.to_thread(self._thread, work)

    def _thread(self, work: ReplyWork) -> ReplyWork:
        parsed = _parsed(work)
        for customer in work.message.entry.envelope.rcpt_tos:
            case = self.store.find_case(parsed.thread_ids, parsed.case_token, customer, customers_thread_only=True)
            if case is not None:
                return dataclasses.replace(work, case=case,
                                           answers=self.store.answered_message(case.id, parsed.in_reply_to))
        return work

    async def guard(self, work: ReplyWork) -> ReplyWork:
        """Holds a reply that attaches a triage card (its notes, the customer's plan and VIP mark
        and the owner's phone are the desk's, not the customer's), or that answers what another
        agent answered within the window; unless released."""
        entry = work.message.entry
        if entry.overridden:
            return work
        reason = self._card_attached(work)
        if reason is None and work.case is not None and self.window:
            earlier = await asyncio.to_thread(self.store.earlier_reply, work.case.id, work.answers,
                                              entry.envelope.submitter, self.clock() - self.window, work.message.id)
            if earlier is not None:
                when = desk_time(earlier.at, self.timezone)
                reason = (f"double reply: {earlier.agent} already answered this message of case #{work.case.id}"
                          f" at {when}")
        if reason is None:
            return work
        parsed = _parsed(work)
        held = work.case is None or not (await asyncio.to_thread(
            self.store.record_reply, queue_id=work.message.id, case_id=work.case.id, agent=entry.envelope.submitter,
            message_id=parsed.message_id, answers=work.answers, subject=parsed.base_subject, at=entry.received_at,
            fate="held", detail=reason)).already_recorded
        author = self._agents.get(entry.envelope.submitter)
        if author is not None:
            await self._tell(author, work, reason)
        if held:
            self.metrics.replies_held.inc()
            self.metrics.reply_fates.labels("held").inc()
        raise Held(reason)

    @staticmethod
    def _card_attached(work: ReplyWork) -> str | None:
        if b".triage@" not in work.message.data:  # nearly every reply: no parsing
            return None
        for message in attached.attached(attached.read(work.message.data)):
            if CARD_ID.fullmatch(str(message.get("Message-ID", "")).strip()) and message.get("X-Mailpipe-Case"):
                return ("it attaches the triage card, which is for the desk (notes, the customer's plan, the"
                        " owner's phone): forward the customer's own message instead")
        return None

    def stamp(self, work: ReplyWork) -> ReplyWork:
        entry = work.message.entry
        owner = self._agents.get(work.case.owner) if work.case else None
        owner = owner or self._agents.get(entry.envelope.submitter)
        language = (work.case.language if work.case else "") or parse(work.message.data).language
        template = self.settings.footer_ja if language == "ja" else self.settings.footer_en
        footer = render(template, name=owner.name if owner else "", phone=owner.phone if owner else "",
                        case=str(work.case.id) if work.case else "")
        stamped = stamp(work.message.data, footer, self.hostname, self.clock())
        for reason in stamped.skipped:
            log.warning("part not stamped", extra={"queue_id": work.message.id, "reason": reason})
        return dataclasses.replace(work, stamped=stamped, data=stamped.data)

    async def sign_off_loop(self, work: ReplyWork) -> ReplyWork:
        """An RSA signature is most of a millisecond of CPU, which OpenSSL spends without the GIL:
        in a signing thread it runs beside the event loop, which keeps answering SMTP sessions."""
        return await self.signing.run(self.sign, work)

    def sign(self, work: ReplyWork) -> ReplyWork:
        domain = domain_of(_parsed(work).sender or work.message.entry.envelope.mail_from)
        return dataclasses.replace(work, data=self.signer.sign(work.data, domain))

    async def record(self, work: ReplyWork) -> ReplyWork:
        """The reply goes on its case as ``queued`` (again after a crash: recorded once)."""
        entry = work.message.entry
        if work.case is not None:
            recorded = await asyncio.to_thread(
                self.store.record_reply, queue_id=work.message.id, case_id=work.case.id,
                agent=entry.envelope.submitter, message_id=_stamped(work).message_id, answers=work.answers,
                subject=_parsed(work).base_subject, at=entry.received_at)
            if not recorded.already_recorded:
                self.metrics.reply_fates.labels("queued").inc()
        return work

    async def hand_off(self, work: ReplyWork) -> None:
        entry = work.message.entry
        by_domain: dict[str, list[str]] = {}
        for recipient in entry.envelope.rcpt_tos:
            by_domain.setdefault(domain_of(recipient), []).append(recipient)
        successors = [(f"{work.message.id}-{index}",
                       dataclasses.replace(entry.envelope, rcpt_tos=tuple(rcpts), listener=OUTBOUND.name), work.data)
                      for index, (_, rcpts) in enumerate(sorted(by_domain.items()))]
        await self.spool.replace(work.message.id, successors)

    async def _tell(self, author: Agent, work: ReplyWork, reason: str) -> None:
        """A note in the author's mailbox, with the case token, threaded under the customer's
        message and the held reply."""
        parsed = _parsed(work)
        case_id = work.case.id if work.case else ""
        release = f"release+{case_id}@{self.desk_domain}" if case_id and self.desk_domain else ""
        body = (f"あなたの返信は送信を保留しました / Your reply was held, not sent.\n\n{reason}\n\n"
                + (f"それでも送信する場合は {release} 宛てにメールを送ってください（このメモの転送でも可）。\n"
                   f"To send it anyway, mail {release} (forwarding this note will do).\n" if release else "")
                + f"取りやめる場合は、キューID {work.message.id} を運用担当に伝えてください。\n"
                f"To drop it, ask the desk's operator to delete queue id {work.message.id}.\n")
        token = f"[#{case_id}] " if case_id else ""
        note = notice.compose(hostname=self.hostname, to=author.address, subject=f"{token}held: {parsed.subject}",
                              body=body, message_id=f"{work.message.id}.held@{self.hostname}",
                              about=(work.answers, parsed.message_id), at=self.clock())
        held = notice.derived(work.message, "H", note)
        await self.mailboxes.deliver(author, [(held, note)])

    @staticmethod
    def summary(work: ReplyWork) -> dict[str, str]:
        return {"case": str(work.case.id) if work.case else "", "agent": work.message.entry.envelope.submitter,
                "to": ",".join(work.message.entry.envelope.rcpt_tos)}


def header_fields(raw: bytes) -> ParsedMessage:
    """The reply parsed without its body: all that threading, the guard, the signer's domain and
    the hand-off read. Its text only chooses the footer's language for a reply outside any case
    (``Replies.stamp``), and the body's decoding and text are most of a parse's CPU (~1 ms for a
    5 KB ISO-2022-JP reply, a signature's worth), so the body is parsed only then."""
    head, _ = headers.split(raw)
    return parse(head + b"\r\n")


def _stamped(work: ReplyWork) -> Stamped:
    assert work.stamped is not None, "stage order: stamp before this"
    return work.stamped


def _parsed(work: ReplyWork) -> ParsedMessage:
    assert work.parsed is not None, "stage order: parse first"
    return work.parsed

