"""Customers, cases, assignments and history: one interface, SQLite by default, PostgreSQL shared.

Callers see plain dataclasses and the protocols below, never SQL. ``sql.SQLStore`` holds the
queries both backends run; ``sqlite.SQLiteStore`` (the embedded default, WAL mode) and
``postgres.PostgresStore`` (several daemons sharing one view) differ only in connecting,
locking and migrations; ``backends.open_store`` picks one from ``store.url``. A caller types its
store with the role it uses (``TriageStore``, ``ReplyStore``, ``CaseNotes``,
``IncidentStore``, ``DmarcStore``); ``Store`` is all of them, for the composition root and the
CLI. Every write that triage makes for one message happens in ``record_inbound``, one
transaction keyed by the spool's queue id: running the same message through triage again after
a crash finds the earlier result instead of opening a second case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

from mailpipe.errors import StoreUnavailable as StoreUnavailable


class StoreError(Exception):
    """The store cannot be used as asked: a schema from a newer mailpipe, an unknown field."""


@dataclass(frozen=True)
class CustomerRecord:
    id: int
    address: str
    name: str = ""
    company: str = ""
    plan: str = ""
    vip: bool = False
    phone: str = ""
    notes: str = ""
    owner: str = ""
    created_at: float = 0.0


@dataclass(frozen=True)
class CaseRecord:
    id: int
    customer_id: int
    subject: str
    status: str
    level: str
    score: float
    owner: str
    opened_at: float
    updated_at: float
    escalated_to: str = ""
    first_response_at: float | None = None
    language: str = ""


def columns(record: type, table_alias: str = "") -> str:
    """The columns a record is read from, in its fields' order (``CaseRecord(*row)``): derived,
    so a field added to a record cannot be left out of one of the queries that read it."""
    prefix = f"{table_alias}." if table_alias else ""
    return ", ".join(prefix + column.name for column in fields(record))


CUSTOMER_COLUMNS = columns(CustomerRecord)
CASE_COLUMNS = columns(CaseRecord)


@dataclass(frozen=True)
class Assignment:
    case_id: int
    agent: str
    role: str  # owner | handler | escalation
    reason: str
    at: float


@dataclass(frozen=True)
class InboundRecord:
    """What triage decided for one spooled message, as stored."""

    queue_id: str
    case: CaseRecord
    customer: CustomerRecord
    new_case: bool
    assignments: tuple[Assignment, ...] = field(default=())
    autoreply: bool = False  # this message took the customer's acknowledgement window


@dataclass(frozen=True)
class ReplyRecord:
    """What recording an agent's reply did to its case."""

    case: CaseRecord
    already_recorded: bool = False  # the same queue id was recorded before (a retry)


@dataclass(frozen=True)
class ReplyFate:
    """An agent's reply in a case and what became of it (``store.desk.FATES``)."""

    case_id: int
    queue_id: str
    agent: str
    subject: str
    message_id: str
    answers: str  # Message-ID of the customer message it answers
    fate: str  # "" for replies recorded before mailpipe kept fates
    detail: str  # why held, which host accepted, the last or final refusal
    at: float  # when the fate was set
    written: float  # when the agent submitted the reply


@dataclass(frozen=True)
class FateChange:
    """What setting a reply's fate did."""

    fate: ReplyFate
    case: CaseRecord
    changed: bool  # False: the same fate again (a repeat after a crash), counted and told once
    first_response: bool = False  # this acceptance set the case's first response time
    reopened: bool = False  # this bounce opened the answered case again


@dataclass(frozen=True)
class EarlierReply:
    agent: str
    at: float
    message_id: str


@dataclass(frozen=True)
class CaseMessage:
    """One message of a case's thread: the customer's (in, with its verdict) or an agent's reply (out)."""

    direction: str  # in | out
    at: float
    subject: str
    message_id: str
    level: str = ""
    score: float = 0.0
    rules: str = ""
    agent: str = ""


@dataclass(frozen=True)
class CaseNote:
    case_id: int
    kind: str  # bounce, ...
    text: str
    at: float


@dataclass(frozen=True)
class Correction:
    """An agent's word on a case's urgency: kept in its history, and learned from."""

    case_id: int
    from_level: str
    to_level: str
    author: str
    at: float
    # False when ``correct_level`` found this correction already made rather than making it: the
    # same command mailed again (a retry after a crash), or the same word again on the same message
    # (a client's resend, a second redirect of the card): nothing more to count or learn.
    recorded: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class IncidentRecord:
    id: int
    provider: str
    klass: str
    sample: str  # the refusal that opened it
    started: float
    last_seen: float
    ended: float | None
    refusals: int
    customers: tuple[str, ...] = ()  # whose mail to this provider was refused meanwhile


@dataclass(frozen=True)
class DmarcRow:
    """One record of a DMARC aggregate report: messages from one source IP, as judged."""

    source_ip: str
    count: int
    dkim_aligned: bool
    spf_aligned: bool
    disposition: str


@dataclass(frozen=True)
class DmarcSummary:
    reporter: str
    source_ip: str
    messages: int
    dkim_aligned: int
    spf_aligned: int
    passed: int  # DMARC pass: DKIM or SPF aligned
    last_end: int


# A profile carries the arrival times of a customer's latest messages of the last 30 days, at
# most this many: a monitoring system that mails support every minute must not hand each of its
# messages 40,000 timestamps to carry through triage. Repeat rules count up to it.
CONTACTS_KEPT = 100
CONTACTS_DAYS = 30


@dataclass(frozen=True)
class Profile:
    """A customer with the history rules and agents look at."""

    customer: CustomerRecord
    contacts: tuple[float, ...]  # arrival times of the latest earlier messages, oldest first
    open_case: CaseRecord | None
    recent_cases: tuple[CaseRecord, ...]


# (the owner now: the case's, or the customer's for a new case; open cases per agent now, read
# on first use) -> (agent, role, reason) assignments
Decide = Callable[[str, Mapping[str, int]], tuple[tuple[str, str, str], ...]]


class CaseLookup(Protocol):
    """The case a message belongs to, by thread, token or customer."""

    def find_case(self, message_ids: tuple[str, ...], case_token: int | None,
                  customer_address: str, *, customers_thread_only: bool = False) -> CaseRecord | None:
        """By thread (the latest case with one of ``message_ids``), else by ``[#N]`` token when
        ``customer_address`` is the case's customer. ``customers_thread_only``: the thread too only
        then, or when it is at the customer's domain (a colleague they copied in) or has written
        to the desk itself (their second address): an agent's mail to a colleague, a vendor or
        the triage card answers no customer, whatever it quotes."""
        ...


class TriageStore(CaseLookup, Protocol):
    """What the inbound stages read and write (``triage.stages``)."""

    # How many threads usefully write at once: SQLite has one writer, and more threads only
    # wait on its lock, in its busy handler's sleeps; PostgreSQL answers over the network and
    # locks rows, so one slow message must not hold the others.
    writers: int

    def profile(self, address: str, now: float) -> Profile | None: ...

    def away(self) -> frozenset[str]: ...

    def recent_replies(self, customer_id: int, limit: int = 5) -> tuple[ReplyFate, ...]: ...

    def case_notes(self, case_id: int) -> tuple[CaseNote, ...]: ...

    def sent_as(self, queue_id: str) -> bool: ...

    def record_inbound(self, *, queue_id: str, address: str, name: str, message_id: str, subject: str,
                       level: str, score: float, rules: str, case_id: int | None, decide: Decide,
                       escalated_to: str, at: float, language: str = "",
                       autoreply_window: float | None = None, document: str = "",
                       automatic: bool = False) -> InboundRecord:
        """``decide`` makes the assignment inside the transaction from the owner and the open
        load as they are there, so concurrent workers and daemons agree. With
        ``autoreply_window``, a new case also takes the customer's acknowledgement window when
        no other message took it within that many seconds."""
        ...


class FateStore(Protocol):
    """What the send queue and the bounce parser record of a reply's fate (``store.desk``)."""

    def set_fate(self, fate: str, detail: str, at: float, *, queue_id: str = "",
                 message_id: str = "") -> FateChange | None:
        ...


class CaseNotes(CaseLookup, FateStore, Protocol):
    """What a bounce needs: that it is of our mail, its case, a note on it, the bounced reply's
    fate (``monitors.returned``)."""

    def sent_by_us(self, message_id: str) -> bool: ...

    def add_case_note(self, case_id: int, kind: str, text: str, queue_id: str, at: float) -> bool: ...


class ReplyStore(CaseLookup, Protocol):
    """What an agent's reply needs: its case, the message it answers, the double-reply guard
    and the record of the reply (``outbound.replies``)."""

    def answered_message(self, case_id: int, in_reply_to: tuple[str, ...]) -> str: ...

    def earlier_reply(self, case_id: int, answers: str, other_than: str, since: float,
                      queue_id: str) -> EarlierReply | None:
        ...

    def record_reply(self, *, queue_id: str, case_id: int, agent: str, message_id: str, answers: str, subject: str,
                     at: float, fate: str = "queued", detail: str = "") -> ReplyRecord:
        ...



class IncidentStore(Protocol):
    """Provider incidents (``monitors.incidents``)."""

    def correct_level(self, case_id: int, level: str, author: str, at: float, *, queue_id: str | None = None,
                      message_id: str = "", message_queue_id: str = "",
                      document: str | None = None) -> Correction | None: ...

    def case_corrections(self, case_id: int) -> tuple[Correction, ...]: ...

    def corrected(self) -> tuple[tuple[str, str, str], ...]: ...

    def open_incident(self, provider: str, klass: str, sample: str, at: float) -> IncidentRecord: ...

    def touch_incident(self, incident_id: int, at: float, customer: str) -> IncidentRecord: ...

    def end_incident(self, incident_id: int, at: float) -> None: ...

    def incidents(self, *, active: bool = False, since: float = 0.0) -> tuple[IncidentRecord, ...]: ...


class DmarcStore(Protocol):
    """DMARC aggregate reports (``monitors.dmarc_reports``, ``monitors.runner``)."""

    def record_dmarc_report(self, *, reporter: str, report_id: str, domain: str, begin: int, end: int,
                            records: Sequence[DmarcRow], at: float) -> bool:
        ...

    def dmarc_summary(self, since: int) -> tuple[DmarcSummary, ...]: ...


class SentStore(Protocol):
    """What the send queue notes of the mail it sends (``outbound.queue``)."""

    def record_sent(self, message_id: str, queue_id: str, at: float) -> None: ...


class Store(TriageStore, CaseNotes, ReplyStore, IncidentStore, DmarcStore, SentStore, Protocol):
    """Every role at once, as ``sql.SQLStore`` implements it: for the daemon and the CLI."""

    def customer(self, address: str) -> CustomerRecord | None: ...

    def upsert_customer(self, address: str, **fields: object) -> CustomerRecord: ...

    def inbound(self, queue_id: str) -> InboundRecord | None: ...

    def open_load(self) -> dict[str, int]: ...

    def open_cases(self) -> dict[str, tuple[int, float]]: ...

    def cases(self, status: str | None = None, limit: int = 100) -> tuple[CaseRecord, ...]: ...

    def set_status(self, case_id: int, status: str, at: float) -> bool: ...

    def reassign(self, case_id: int, agent: str, reason: str, queue_id: str, at: float) -> str | None: ...

    def set_away(self, agent: str, away: bool, at: float) -> None: ...

    def cases_of(self, customer_id: int, limit: int = 10) -> tuple[CaseRecord, ...]: ...

    def case(self, case_id: int) -> CaseRecord | None: ...

    def customer_of(self, case_id: int) -> CustomerRecord | None: ...

    def case_messages(self, case_id: int) -> tuple[CaseMessage, ...]: ...

    def case_assignments(self, case_id: int) -> tuple[Assignment, ...]: ...

    def reply_fates(self, case_id: int) -> tuple[ReplyFate, ...]: ...

    def bounced_since(self, since: float) -> tuple[ReplyFate, ...]: ...

    def corrections_since(self, since: float) -> tuple[Correction, ...]: ...

    def customers_by_phone(self, phone: str) -> tuple[CustomerRecord, ...]: ...

    def set_password(self, agent: str, password_hash: str, at: float) -> None: ...

    def password_hash(self, agent: str) -> str | None: ...

    def close(self) -> None: ...
