"""The store's queries for the desk in the mail client: agents' replies and what became of
each, customers found by phone number, and notes agents add to cases.

Part of ``SQLStore`` (which inherits them), like ``deliverability``: the same SQL subset for
SQLite and PostgreSQL, written in ``base``'s write transaction.

A reply's fate (``FATES``) is kept on its row of ``messages``: ``queued`` when the submission
worker hands it to the send queue, ``held`` by the double-reply guard, ``sent`` when the
customer's side accepted it (only then is the case answered and its first response time set),
``deferred`` with the last temporary refusal, ``bounced`` (the case opens again), ``deleted``
from the queue by an operator. A send queue entry carries the reply's queue id plus ``-N``
(one per recipient domain): ``reply_queue_id`` maps it back.
"""

from __future__ import annotations

from mailpipe import phones
from mailpipe.store import (
    CASE_COLUMNS,
    CUSTOMER_COLUMNS,
    CaseRecord,
    Correction,
    CustomerRecord,
    EarlierReply,
    FateChange,
    ReplyFate,
    ReplyRecord,
)
from mailpipe.store.base import SQLBase

FATES = ("queued", "held", "sent", "deferred", "bounced", "deleted")
_FINAL = ("sent", "bounced")  # a later deferral of another recipient domain does not undo these
_NOT_ANSWERS = ("held", "deleted", "bounced")  # replies the double-reply guard does not count


def _fate_columns(table: str = "") -> str:
    """A reply's columns as ``ReplyFate`` takes them, of ``messages`` (aliased ``table``)."""
    p = f"{table}." if table else ""
    return (f"{p}case_id, {p}queue_id, {p}agent, {p}subject, {p}message_id, {p}in_reply_to, {p}fate, {p}fate_detail,"
            f" coalesce({p}fate_at, {p}at), {p}at")


_FATE_COLUMNS = _fate_columns()


def reply_queue_id(queue_id: str) -> str:
    """The reply's own queue id for one of its send queue entries (``QID-0`` → ``QID``)."""
    return queue_id.rsplit("-", 1)[0]


class DeskQueries(SQLBase):
    def record_reply(self, *, queue_id: str, case_id: int, agent: str, message_id: str, answers: str, subject: str,
                     at: float, fate: str = "queued", detail: str = "") -> ReplyRecord:
        """The reply joins its case's history with its fate (``queued``, or ``held`` by the
        guard). Idempotent per queue id; a held reply released and queued moves on to queued.
        The case is answered only when the reply is ``sent`` (``set_fate``)."""
        with self._transaction() as conn:
            found = conn.execute("SELECT fate FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
            if found is None:
                conn.execute("INSERT INTO messages (case_id, queue_id, message_id, direction, subject, agent,"
                             " in_reply_to, at, fate, fate_detail, fate_at) VALUES (?, ?, ?, 'out', ?, ?, ?, ?, ?,"
                             " ?, ?)", (case_id, queue_id, message_id, subject, agent, answers, at, fate, detail, at))
            elif found[0] == "held" and fate != "held":
                conn.execute("UPDATE messages SET fate = ?, fate_detail = ?, fate_at = ?, message_id = ?"
                             " WHERE queue_id = ?", (fate, detail, at, message_id, queue_id))
            case = CaseRecord(*conn.execute(f"SELECT {CASE_COLUMNS} FROM cases WHERE id = ?", (case_id,)).fetchone())
        return ReplyRecord(case, already_recorded=found is not None)

    def earlier_reply(self, case_id: int, answers: str, other_than: str, since: float,
                      queue_id: str) -> EarlierReply | None:
        """A reply to the same customer message by another agent since ``since`` (the double-reply
        guard); replies that are this very message, recorded before a crash, and replies held,
        deleted or bounced do not count."""
        row = self._conn().execute(
            "SELECT agent, at, message_id FROM messages WHERE case_id = ? AND in_reply_to = ? AND direction = 'out'"
            " AND agent != ? AND at >= ? AND queue_id != ? AND fate NOT IN (?, ?, ?) ORDER BY at DESC LIMIT 1",
            (case_id, answers, other_than, since, queue_id, *_NOT_ANSWERS)).fetchone()
        return EarlierReply(*row) if row else None

    def set_fate(self, fate: str, detail: str, at: float, *, queue_id: str = "",
                 message_id: str = "") -> FateChange | None:
        """What became of a reply, found by its queue id or its Message-ID; None for mail that
        is no agent's reply in a case (an acknowledgement, a probe). ``sent`` answers the case
        and sets its first response time once; ``bounced`` opens an answered case again."""
        assert fate in FATES, fate
        column, value = ("queue_id", queue_id) if queue_id else ("message_id", message_id)
        with self._transaction() as conn:
            row = conn.execute(f"SELECT {_FATE_COLUMNS} FROM messages WHERE {column} = ? AND direction = 'out'"
                               " ORDER BY id DESC LIMIT 1", (value,)).fetchone()
            if row is None:
                return None
            before = ReplyFate(*row)
            changed = (before.fate, before.detail) != (fate, detail) and not (
                fate == "deferred" and before.fate in _FINAL)
            first = reopened = False
            if changed:
                conn.execute("UPDATE messages SET fate = ?, fate_detail = ?, fate_at = ? WHERE queue_id = ?",
                             (fate, detail, at, before.queue_id))
                if fate == "sent":
                    first = conn.execute("UPDATE cases SET first_response_at = ? WHERE id = ?"
                                         " AND first_response_at IS NULL", (at, before.case_id)).rowcount > 0
                    conn.execute("UPDATE cases SET status = 'answered', updated_at = ? WHERE id = ?"
                                 " AND status = 'open'", (at, before.case_id))
                elif fate == "bounced":
                    reopened = conn.execute("UPDATE cases SET status = 'open', updated_at = ? WHERE id = ?"
                                            " AND status = 'answered'", (at, before.case_id)).rowcount > 0
            after = ReplyFate(*conn.execute(f"SELECT {_FATE_COLUMNS} FROM messages WHERE queue_id = ?",
                                            (before.queue_id,)).fetchone())
            case = CaseRecord(*conn.execute(f"SELECT {CASE_COLUMNS} FROM cases WHERE id = ?",
                                            (before.case_id,)).fetchone())
        return FateChange(after, case, changed=changed, first_response=first, reopened=reopened)

    def reply_fates(self, case_id: int) -> tuple[ReplyFate, ...]:
        """The case's replies, oldest first, each with its fate."""
        return tuple(ReplyFate(*row) for row in self._conn().execute(
            f"SELECT {_FATE_COLUMNS} FROM messages WHERE case_id = ? AND direction = 'out' ORDER BY at, id",
            (case_id,)))

    def recent_replies(self, customer_id: int, limit: int = 5) -> tuple[ReplyFate, ...]:
        """The customer's latest replies over all their cases, newest first: the triage card
        says what became of them."""
        return tuple(ReplyFate(*row) for row in self._conn().execute(
            f"SELECT {_fate_columns('m')}"
            " FROM messages m JOIN cases c ON c.id = m.case_id WHERE c.customer_id = ? AND m.direction = 'out'"
            " ORDER BY m.at DESC, m.id DESC LIMIT ?", (customer_id, limit)))

    def bounced_since(self, since: float) -> tuple[ReplyFate, ...]:
        """Replies that bounced since ``since``, oldest first (the lead's digest)."""
        return tuple(ReplyFate(*row) for row in self._conn().execute(
            f"SELECT {_FATE_COLUMNS} FROM messages WHERE direction = 'out' AND fate = 'bounced' AND fate_at >= ?"
            " ORDER BY fate_at, id", (since,)))

    def corrections_since(self, since: float) -> tuple[Correction, ...]:
        """Agents' urgency corrections since ``since``, oldest first (the lead's digest)."""
        return tuple(Correction(*row) for row in self._conn().execute(
            "SELECT case_id, from_level, to_level, author, at FROM corrections WHERE at >= ? ORDER BY at, id",
            (since,)))

    def customers_by_phone(self, phone: str) -> tuple[CustomerRecord, ...]:
        """Customers whose phone number is ``phone`` however either was written."""
        wanted = phones.key(phone)
        if not wanted:
            return ()
        return tuple(CustomerRecord(*row[:5], bool(row[5]), *row[6:]) for row in self._conn().execute(
            f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE phone_key = ? ORDER BY id", (wanted,)))
