"""What one inbound message carries through the stages (``Work``), filled in stage by stage.

Each stage of ``triage.stages`` takes a ``Work`` and returns a new one with its own field set;
``parsed_of`` and ``verdict_of`` read the fields a later stage relies on, and fail loudly if the
stage table ever runs out of order. Plain data: no stage logic lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailpipe import auth
from mailpipe.config import Agent
from mailpipe.message import ParsedMessage
from mailpipe.outbound.acknowledge import Acknowledgement
from mailpipe.spool import Message
from mailpipe.store import CaseNote, InboundRecord, Profile, ReplyFate
from mailpipe.triage.model import Reading
from mailpipe.triage.score import Verdict


@dataclass(frozen=True)
class Work:
    message: Message
    parsed: ParsedMessage | None = None
    auth: auth.Verdict | None = None
    profile: Profile | None = None
    away: frozenset[str] = frozenset()
    thread_case: int | None = None
    urgency: Reading | None = None  # the urgency model's reading, made in its own process
    verdict: Verdict | None = None
    record: InboundRecord | None = None
    recipients: tuple[Agent, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    subject: str | None = None
    authserv_id: str = ""  # Authentication-Results claiming this id are ours alone
    card: bytes | None = None
    acknowledgement: Acknowledgement | None = None
    replies: tuple[ReplyFate, ...] = ()  # our latest replies to this customer, with their fates
    notes: tuple[CaseNote, ...] = ()  # notes on the case this message continues (calls, bounces)


def parsed_of(work: Work) -> ParsedMessage:
    assert work.parsed is not None, "stage order: parse first"
    return work.parsed


def verdict_of(work: Work) -> Verdict:
    assert work.verdict is not None, "stage order: score before this"
    return work.verdict
