"""Everything a rule may look at, gathered before scoring so rules stay pure functions.

The parsed message, what the store knows of the customer and their history, what inbound
authentication concluded of DMARC, the providers with an active incident, and the clock. Text
is folded once here (NFKC, casefold) for every keyword rule. ``triage_context`` builds one
from what the store returned, for the inbound stages and ``mailpipe score`` alike.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING

from mailpipe import auth
from mailpipe.config import TriageConfig
from mailpipe.message import ParsedMessage
from mailpipe.store import CustomerRecord, Profile
from mailpipe.triage.hours import within_business_hours

if TYPE_CHECKING:
    from mailpipe.triage.model import ParagraphsRead, Passage, Prediction, Reading, UrgencyModel


def document(subject: str, new_text: str, is_reply: bool) -> str:
    """What keyword rules and the model read: a reply's subject repeats the old topic, so a
    reply is its new text alone."""
    return new_text if is_reply else f"{subject}\n{new_text}"


def fold(text: str) -> str:
    """What keywords are compared on: NFKC (full-width ASCII and half-width kana unified), casefolded."""
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True)
class History:
    contacts: tuple[datetime, ...] = ()
    open_case_since: datetime | None = None

    def contacts_within(self, hours: float, now: datetime) -> int:
        since = now - timedelta(hours=hours)
        return sum(1 for moment in self.contacts if since <= moment <= now)

    def open_case_age_hours(self, now: datetime) -> float | None:
        if self.open_case_since is None:
            return None
        return (now - self.open_case_since).total_seconds() / 3600


@dataclass(frozen=True)
class Context:
    message: ParsedMessage
    now: datetime
    customer: CustomerRecord | None = None
    history: History = field(default_factory=History)
    dmarc: str = "none"
    business_hours: bool = True
    incidents: frozenset[str] = frozenset()  # providers refusing our mail right now (reply catalog names)
    model: UrgencyModel | None = None  # the learned urgency model, when the desk runs one
    reading: Reading | None = None  # its reading of this message, where it was made beforehand

    @property
    def trusted_vip(self) -> bool:
        """A VIP address that fails DMARC is somebody else using it: not a VIP."""
        return self.customer is not None and self.customer.vip and self.dmarc != "fail"

    @cached_property
    def folded_subject(self) -> str:
        return fold(self.message.subject)

    @cached_property
    def folded_body(self) -> str:
        return fold(self.message.read_text)

    @cached_property
    def folded_all(self) -> str:
        """Subject and new text; a reply's subject repeats the old topic, so only its new text."""
        return document(self.folded_subject, self.folded_body, self.message.is_reply)

    @cached_property
    def urgency(self) -> Prediction | Reading | None:
        """The model's reading: the one made beforehand, or one made only when a rule asks for it."""
        if self.reading is not None or self.model is None:
            return self.reading
        return self.model.predict(self.document, self.folded_all)

    @cached_property
    def document(self) -> str:
        return document(self.message.subject, self.message.read_text, self.message.is_reply)

    def passage(self, levels: tuple[str, ...]) -> Passage | None:
        """The paragraph the model reads likeliest at ``levels``: from the reading made beforehand,
        or from the paragraphs read now, once, when a rule first asks."""
        if self.reading is not None:
            return self.reading.passages.get(levels)
        return self._paragraphs_read.strongest(levels) if self._paragraphs_read is not None else None

    @cached_property
    def _paragraphs_read(self) -> ParagraphsRead | None:
        return self.model.paragraphs_read(self.document) if self.model is not None else None


def triage_context(parsed: ParsedMessage, profile: Profile | None, now: datetime, desk: TriageConfig,
                   authserv_id: str, verified: auth.Verdict | None = None,
                   incidents: frozenset[str] = frozenset(), model: UrgencyModel | None = None,
                   reading: Reading | None = None) -> Context:
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
                   business_hours=within_business_hours(now, desk), incidents=incidents, model=model,
                   reading=reading)


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
