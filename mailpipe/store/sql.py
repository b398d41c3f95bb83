"""The store's queries, written once for SQLite and PostgreSQL.

``SQLStore`` holds the desk's queries (customers, cases, messages, assignments, replies, notes,
agents' state and passwords); a dialect subclass supplies connections (``_conn``: one per
thread, speaking sqlite3's ``execute(sql, params)`` with ``?`` placeholders), how a write
transaction begins (``_BEGIN``), how a read row is locked for the rest of it (``_LOCK``), and
how new assignments are serialised (``_lock_assignments``). The SQL itself is the subset both
understand: ``INSERT … ON CONFLICT``, ``RETURNING``, ``CASE``, no dialect functions. The
queries for DMARC reports and incidents (``deliverability``), for replies' fates and phone
lookups (``desk``) and for export and import (``transfer``) are written beside it, in classes
``SQLStore`` inherits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from mailpipe import phones
from mailpipe.addresses import canonical, domain_of
from mailpipe.store import (
    CASE_COLUMNS,
    CONTACTS_DAYS,
    CONTACTS_KEPT,
    CUSTOMER_COLUMNS,
    Assignment,
    CaseMessage,
    CaseNote,
    CaseRecord,
    Correction,
    CustomerRecord,
    Decide,
    InboundRecord,
    Profile,
    StoreError,
    columns,
)
from mailpipe.store.base import Connection
from mailpipe.store.deliverability import DeliverabilityQueries
from mailpipe.store.desk import DeskQueries
from mailpipe.store.transfer import TransferQueries


def _customer(row: tuple) -> CustomerRecord:
    return CustomerRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], row[8], row[9])


def _case(row: tuple) -> CaseRecord:
    return CaseRecord(*row)



# A case is as urgent as its most urgent message: levels by rank, most urgent first. Not by
# score: a rule may cap the level (``at_most``), so the message with more points is not always
# the more urgent one.
_URGENCY = ("critical", "high", "normal", "low")
_CASE_URGENCY = "CASE level WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END"

# Open cases by who carries them, a few rows however many cases are open: one pass over the
# ``cases_open`` index, in its order, where one pass per role and a grouping by agent took four
# times as long (bench/triage.py: it is read for every new customer and every escalation).
_OPEN_CARRIERS = ("SELECT owner, handler, escalated_agent, count(*) FROM cases WHERE status = 'open'"
                  " GROUP BY owner, handler, escalated_agent")


_CORRECTION = "case_id, from_level, to_level, author, at"


def _document(conn: Connection, case_id: int, message_id: str, message_queue_id: str) -> str:
    """What the model read of the customer message a correction is about (``correct_level``)."""
    which, named = (" AND queue_id = ?", (message_queue_id,)) if message_queue_id else \
        (" AND message_id = ?", (message_id,)) if message_id else ("", ())
    found = conn.execute(f"SELECT document FROM messages WHERE case_id = ? AND direction = 'in'{which}"
                         " ORDER BY at DESC, id DESC LIMIT 1", (case_id, *named)).fetchone()
    return found[0] if found else ""


def _open_load(conn: Connection) -> dict[str, int]:
    """Open cases per agent: a case counts once for each distinct agent among its owner,
    handler and escalation agent."""
    load: dict[str, int] = {}
    for owner, handler, escalated, count in conn.execute(_OPEN_CARRIERS):
        for agent in dict.fromkeys((owner, handler, escalated)):
            if agent:
                load[agent] = load.get(agent, 0) + count
    return dict(sorted(load.items()))


class _LoadOnFirstUse(Mapping[str, int]):
    """The open load, read when an assignment first asks for it: most messages go to a sticky
    owner who is present, and need neither the read (it scans every open case) nor its lock."""

    def __init__(self, read: Callable[[], dict[str, int]]):
        self._read = read
        self._load: dict[str, int] | None = None

    def _loaded(self) -> dict[str, int]:
        if self._load is None:
            self._load = self._read()
        return self._load

    def __getitem__(self, agent: str) -> int:
        return self._loaded()[agent]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())


class SQLStore(DeliverabilityQueries, DeskQueries, TransferQueries):
    _LOCK = ""

    def reconnect(self) -> None:
        """Opens connections afresh from now on (after a storage fault: a file SQLite opened
        read-only stays read-only on that connection); a pooled backend needs nothing."""

    def _lock_assignments(self, conn: Connection) -> None:
        """Serialises the load check of new assignments across every writer of the store."""

    def close(self) -> None:
        raise NotImplementedError

    def migrate(self) -> int:
        raise NotImplementedError

    def customer(self, address: str) -> CustomerRecord | None:
        row = self._conn().execute(f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE address = ?",
                                   (canonical(address),)).fetchone()
        return _customer(row) if row else None

    def upsert_customer(self, address: str, **fields: object) -> CustomerRecord:
        """Creates the customer or updates the given fields (first contact)."""
        self.upsert_customers([(address, fields)])
        found = self.customer(address)
        assert found is not None
        return found

    def upsert_customers(self, rows: Sequence[tuple[str, Mapping[str, object]]]) -> None:
        """Creates or updates each customer's given fields, all in one transaction (an import
        that fails half-way leaves nothing behind)."""
        allowed = {"name", "company", "plan", "vip", "phone", "notes", "owner"}
        unknown = {key for _, fields in rows for key in fields} - allowed
        if unknown:
            raise StoreError(f"unknown customer fields: {', '.join(sorted(unknown))}")
        with self._transaction() as conn:
            for address, fields in rows:
                conn.execute("INSERT INTO customers (address, created_at) VALUES (?, ?)"
                             " ON CONFLICT(address) DO NOTHING", (canonical(address), time.time()))
                for key, value in fields.items():
                    conn.execute(f"UPDATE customers SET {key} = ? WHERE address = ?",  # key is from `allowed`
                                 (int(bool(value)) if key == "vip" else value, canonical(address)))
                    if key == "phone":
                        conn.execute("UPDATE customers SET phone_key = ? WHERE address = ?",
                                     (phones.key(str(value)), canonical(address)))

    def profile(self, address: str, now: float) -> Profile | None:
        customer = self.customer(address)
        if customer is None:
            return None
        conn = self._conn()
        latest = [at for (at,) in conn.execute(
            "SELECT m.at FROM messages m JOIN cases c ON c.id = m.case_id WHERE c.customer_id = ?"
            " AND m.direction = 'in' AND m.at >= ? ORDER BY m.at DESC LIMIT ?",
            (customer.id, now - CONTACTS_DAYS * 86400, CONTACTS_KEPT))]
        contacts = tuple(reversed(latest))
        open_row = conn.execute(f"SELECT {CASE_COLUMNS} FROM cases WHERE customer_id = ? AND status != 'closed'"
                                " ORDER BY opened_at LIMIT 1", (customer.id,)).fetchone()
        return Profile(customer, contacts, _case(open_row) if open_row else None, self.cases_of(customer.id, 5))

    def cases_of(self, customer_id: int, limit: int = 10) -> tuple[CaseRecord, ...]:
        rows = self._conn().execute(f"SELECT {CASE_COLUMNS} FROM cases WHERE customer_id = ?"
                                    " ORDER BY opened_at DESC, id DESC LIMIT ?", (customer_id, limit))
        return tuple(_case(row) for row in rows)

    def find_case(self, message_ids: tuple[str, ...], case_token: int | None,
                  customer_address: str, *, customers_thread_only: bool = False) -> CaseRecord | None:
        conn = self._conn()
        case_columns = columns(CaseRecord, "c")
        if message_ids:
            marks = ",".join("?" * len(message_ids))
            # The case's customer, someone at their domain (a colleague they copied in), or anyone who
            # has written to the desk (the customer's second address, which threaded into the case).
            address = canonical(customer_address)
            domain = domain_of(address).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            whose, customer = (" AND (u.address = ? OR u.address LIKE ? ESCAPE '\\'"
                               " OR EXISTS (SELECT 1 FROM customers k WHERE k.address = ?))",
                               (address, f"%@{domain}", address)) if customers_thread_only else ("", ())
            row = conn.execute(f"SELECT {case_columns} FROM messages m JOIN cases c ON c.id = m.case_id"
                               f" JOIN customers u ON u.id = c.customer_id WHERE m.message_id IN ({marks}){whose}"
                               " ORDER BY m.at DESC LIMIT 1", (*message_ids, *customer)).fetchone()
            if row:
                return _case(row)
        if case_token is not None:
            row = conn.execute(f"SELECT {case_columns} FROM cases c JOIN customers u ON u.id = c.customer_id"
                               " WHERE c.id = ? AND u.address = ?",
                               (case_token, canonical(customer_address))).fetchone()
            if row:
                return _case(row)
        return None

    def inbound(self, queue_id: str) -> InboundRecord | None:
        conn = self._conn()
        row = conn.execute("SELECT case_id FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
        if row is None:
            return None
        case = _case(conn.execute(f"SELECT {CASE_COLUMNS} FROM cases WHERE id = ?", (row[0],)).fetchone())
        customer = _customer(conn.execute(f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?",
                                          (case.customer_id,)).fetchone())
        assignments = tuple(Assignment(*r) for r in conn.execute(
            "SELECT case_id, agent, role, reason, at FROM assignments WHERE queue_id = ? ORDER BY id", (queue_id,)))
        first = conn.execute("SELECT min(id) FROM messages WHERE case_id = ?", (case.id,)).fetchone()[0]
        new_case = conn.execute("SELECT queue_id FROM messages WHERE id = ?", (first,)).fetchone()[0] == queue_id
        autoreply = conn.execute("SELECT last_autoreply_queue_id FROM customers WHERE id = ?",
                                 (customer.id,)).fetchone()[0] == queue_id
        return InboundRecord(queue_id, case, customer, new_case, assignments, autoreply)

    def record_inbound(self, *, queue_id: str, address: str, name: str, message_id: str, subject: str,
                       level: str, score: float, rules: str, case_id: int | None, decide: Decide,
                       escalated_to: str, at: float, language: str = "",
                       autoreply_window: float | None = None, document: str = "",
                       automatic: bool = False) -> InboundRecord:
        """One transaction: customer (created on first contact), case (opened or updated), the
        message, and the assignments with their reasons. Idempotent per queue id. ``decide``
        chooses the assignments from the owner (the case's, or the customer's for a new case)
        and the open load, read under the customer row's lock and, when it needs the load, the
        assignment lock, so concurrent workers and daemons agree on one owner per customer and
        keep least-loaded assignment balanced. A new case given ``autoreply_window`` takes the
        customer's acknowledgement window in the same transaction (one write per message, and a
        message recorded again after a crash finds the same answer). ``document`` is what the
        urgency model read, kept so an agent's correction of the case can be learned from. An
        ``automatic`` message (an auto-reply, list mail) files its new case closed and leaves an
        existing case's status alone: it counts in nobody's load and reopens nothing."""
        record = self._record_inbound(queue_id=queue_id, address=address, name=name, message_id=message_id,
                                      subject=subject, level=level, score=score, rules=rules, case_id=case_id,
                                      decide=decide, escalated_to=escalated_to, at=at, language=language,
                                      autoreply_window=autoreply_window, document=document, automatic=automatic)
        if record is None:  # recorded before a crash: read back as any reader does, after the transaction
            record = self.inbound(queue_id)
            assert record is not None
        return record

    def _record_inbound(self, *, queue_id: str, address: str, name: str, message_id: str, subject: str,
                        level: str, score: float, rules: str, case_id: int | None, decide: Decide,
                        escalated_to: str, at: float, language: str,
                        autoreply_window: float | None, document: str, automatic: bool) -> InboundRecord | None:
        """``record_inbound``'s transaction; None when ``queue_id`` is recorded already."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM messages WHERE queue_id = ?", (queue_id,)).fetchone():
                return None
            address = canonical(address)
            # Written here, so locked for the rest of the transaction (PostgreSQL) or written alone
            # (SQLite): the owner it returns is the final word.
            customer_id, owner_now = conn.execute(
                "INSERT INTO customers (address, name, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT(address) DO UPDATE SET name = CASE WHEN customers.name = '' THEN excluded.name"
                " ELSE customers.name END RETURNING id, owner", (address, name, at)).fetchone()
            new_case = case_id is None
            if not new_case:
                owner_now = conn.execute("SELECT owner FROM cases WHERE id = ?", (case_id,)).fetchone()[0]

            def read_load() -> dict[str, int]:
                self._lock_assignments(conn)
                return _open_load(conn)

            assignments = decide(owner_now, _LoadOnFirstUse(read_load))
            roles = {role: agent for agent, role, _ in assignments}
            owner, handler, escalated = roles.get("owner", ""), roles.get("handler", ""), roles.get("escalation", "")
            # The case as this transaction leaves it (nothing below changes it), returned by its write.
            if case_id is None:
                row = conn.execute(
                    "INSERT INTO cases (customer_id, subject, status, level, score, owner, handler, escalated_to,"
                    " escalated_agent, opened_at, updated_at, language)"
                    f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {CASE_COLUMNS}",
                    (customer_id, subject, "closed" if automatic else "open", level, score, owner, handler,
                     escalated_to, escalated, at, at, language)).fetchone()
            else:
                row = conn.execute(
                    "UPDATE cases SET status = CASE WHEN ? THEN status ELSE 'open' END, updated_at = ?,"
                    " score = CASE WHEN score > ? THEN score ELSE ? END,"
                    f" level = CASE WHEN ? < {_CASE_URGENCY} THEN ? ELSE level END, handler = ?,"
                    " escalated_to = CASE WHEN ? != '' THEN ? ELSE escalated_to END,"
                    " escalated_agent = CASE WHEN ? != '' THEN ? ELSE escalated_agent END WHERE id = ?"
                    f" RETURNING {CASE_COLUMNS}",
                    (automatic, at, score, score, _URGENCY.index(level), level, handler, escalated_to, escalated_to,
                     escalated, escalated, case_id)).fetchone()
            case = _case(row)
            case_id = case.id
            if owner:
                conn.execute("UPDATE customers SET owner = ? WHERE id = ? AND owner = ''", (owner, customer_id))
            autoreply = new_case and autoreply_window is not None and conn.execute(
                "UPDATE customers SET last_autoreply_at = ?, last_autoreply_queue_id = ? WHERE id = ?"
                " AND (last_autoreply_at IS NULL OR last_autoreply_at <= ?)",
                (at, queue_id, customer_id, at - autoreply_window)).rowcount > 0
            conn.execute("INSERT INTO messages (case_id, queue_id, message_id, direction, subject, level, score, rules,"
                         " at, document) VALUES (?, ?, ?, 'in', ?, ?, ?, ?, ?, ?)",
                         (case_id, queue_id, message_id, subject, level, score, rules, at, document))
            conn.executemany("INSERT INTO assignments (case_id, queue_id, agent, role, reason, at)"
                             " VALUES (?, ?, ?, ?, ?, ?)",
                             [(case_id, queue_id, agent, role, reason, at) for agent, role, reason in assignments])
            customer = _customer(conn.execute(f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?",
                                              (customer_id,)).fetchone())
        recorded = tuple(Assignment(case.id, agent, role, reason, at) for agent, role, reason in assignments)
        return InboundRecord(queue_id, case, customer, new_case, recorded, autoreply)

    def open_load(self) -> dict[str, int]:
        """Open cases per agent: those they own, handle for an away owner, or were escalated to.
        Reads only the open cases (an index on status), however long the history grows."""
        return _open_load(self._conn())

    def cases(self, status: str | None = None, limit: int = 100) -> tuple[CaseRecord, ...]:
        """Newest first; only those with ``status`` when given."""
        where, args = ("WHERE status = ?", (status, limit)) if status else ("", (limit,))
        return tuple(_case(row) for row in self._conn().execute(
            f"SELECT {CASE_COLUMNS} FROM cases {where} ORDER BY id DESC LIMIT ?", args))

    def set_status(self, case_id: int, status: str, at: float) -> bool:
        """Closes or reopens a case; False when there is no such case."""
        with self._writing:
            return self._conn().execute("UPDATE cases SET status = ?, updated_at = ? WHERE id = ?",
                                        (status, at, case_id)).rowcount > 0

    def reassign(self, case_id: int, agent: str, reason: str, queue_id: str, at: float) -> str | None:
        """Makes ``agent`` the owner of the case and of its customer (one owner per customer),
        recorded as an assignment with its reason; once per ``queue_id``. The case's owner
        afterwards (run again: whoever owns it now, not ``agent``, chosen by a load that has
        changed since), or None when there is no such case."""
        with self._transaction() as conn:
            row = conn.execute(f"SELECT customer_id, owner FROM cases WHERE id = ?{self._LOCK}", (case_id,)).fetchone()
            done = conn.execute("SELECT 1 FROM assignments WHERE queue_id = ? AND case_id = ?",
                                (queue_id, case_id)).fetchone()
            if row is None or done is not None:
                return row[1] if row is not None else None
            conn.execute("UPDATE cases SET owner = ?, handler = '', updated_at = ? WHERE id = ?",
                         (agent, at, case_id))
            conn.execute("UPDATE customers SET owner = ? WHERE id = ?", (agent, row[0]))
            conn.execute("INSERT INTO assignments (case_id, queue_id, agent, role, reason, at)"
                         " VALUES (?, ?, ?, 'owner', ?, ?)", (case_id, queue_id, agent, reason, at))
        return agent

    def open_cases(self) -> dict[str, tuple[int, float]]:
        """Per urgency level: how many cases are open, and when the oldest was opened."""
        return {level: (count, oldest) for level, count, oldest in self._conn().execute(
            "SELECT level, count(*), min(opened_at) FROM cases WHERE status = 'open' GROUP BY level")}

    def set_away(self, agent: str, away: bool, at: float) -> None:
        with self._writing:
            self._conn().execute("INSERT INTO agent_state (agent, away, since) VALUES (?, ?, ?) ON CONFLICT(agent)"
                                 " DO UPDATE SET away = excluded.away, since = excluded.since", (agent, int(away), at))

    def away(self) -> frozenset[str]:
        return frozenset(agent for (agent,) in self._conn().execute("SELECT agent FROM agent_state WHERE away = 1"))

    def case(self, case_id: int) -> CaseRecord | None:
        row = self._conn().execute(f"SELECT {CASE_COLUMNS} FROM cases WHERE id = ?", (case_id,)).fetchone()
        return _case(row) if row else None

    def customer_of(self, case_id: int) -> CustomerRecord | None:
        row = self._conn().execute(f"SELECT {', '.join('u.' + c.strip() for c in CUSTOMER_COLUMNS.split(','))}"
                                   " FROM customers u JOIN cases c ON c.customer_id = u.id WHERE c.id = ?",
                                   (case_id,)).fetchone()
        return _customer(row) if row else None

    def answered_message(self, case_id: int, in_reply_to: tuple[str, ...]) -> str:
        """The customer message a reply answers: the newest of ``in_reply_to`` that the customer
        sent in this case, else the case's newest message from the customer."""
        conn = self._conn()
        if in_reply_to:
            marks = ",".join("?" * len(in_reply_to))
            row = conn.execute(f"SELECT message_id FROM messages WHERE case_id = ? AND direction = 'in'"
                               f" AND message_id IN ({marks}) ORDER BY at DESC LIMIT 1",
                               (case_id, *in_reply_to)).fetchone()
            if row:
                return row[0]
        row = conn.execute("SELECT message_id FROM messages WHERE case_id = ? AND direction = 'in'"
                           " ORDER BY at DESC, id DESC LIMIT 1", (case_id,)).fetchone()
        return row[0] if row else ""

    def add_case_note(self, case_id: int, kind: str, text: str, queue_id: str, at: float) -> bool:
        """False when the message ``queue_id`` already left its note (a repeat after a crash)."""
        with self._writing:
            return self._conn().execute("INSERT INTO case_notes (case_id, queue_id, kind, text, at)"
                                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(queue_id) DO NOTHING",
                                        (case_id, queue_id, kind, text, at)).rowcount > 0

    def case_notes(self, case_id: int) -> tuple[CaseNote, ...]:
        return tuple(CaseNote(*row) for row in self._conn().execute(
            "SELECT case_id, kind, text, at FROM case_notes WHERE case_id = ? ORDER BY at, id", (case_id,)))

    def case_messages(self, case_id: int) -> tuple[CaseMessage, ...]:
        return tuple(CaseMessage(*row) for row in self._conn().execute(
            "SELECT direction, at, subject, message_id, level, score, rules, agent FROM messages WHERE case_id = ?"
            " ORDER BY at, id", (case_id,)))

    def correct_level(self, case_id: int, level: str, author: str, at: float, *, queue_id: str | None = None,
                      message_id: str = "", message_queue_id: str = "",
                      document: str | None = None) -> Correction | None:
        """Sets a case's level on an agent's word and keeps the correction with what to learn
        from: ``document``, else what the model read of the customer message of the case with
        queue id ``message_queue_id`` or Message-ID ``message_id`` (nothing, when the case has no
        such message: not another message's words), else of its latest one. Once per ``queue_id``,
        and not again while the case's latest correction is the same word on the same text (see
        ``Correction.recorded``). None when there is no such case."""
        with self._transaction() as conn:
            done = conn.execute(f"SELECT {_CORRECTION} FROM corrections WHERE queue_id = ?",
                                (queue_id,)).fetchone() if queue_id else None
            row = conn.execute(f"SELECT level FROM cases WHERE id = ?{self._LOCK}", (case_id,)).fetchone()
            if done is not None or row is None:
                return Correction(*done, recorded=False) if done else None
            if document is None:
                document = _document(conn, case_id, message_id, message_queue_id)
            latest = conn.execute(f"SELECT {_CORRECTION}, document FROM corrections WHERE case_id = ?"
                                  " ORDER BY id DESC LIMIT 1", (case_id,)).fetchone()
            if row[0] == level and latest is not None and latest[2] == level and latest[5] == document:
                return Correction(*latest[:5], recorded=False)
            conn.execute("UPDATE cases SET level = ?, updated_at = ? WHERE id = ?", (level, at, case_id))
            conn.execute("INSERT INTO corrections (case_id, queue_id, from_level, to_level, author, document, at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", (case_id, queue_id, row[0], level, author, document, at))
        return Correction(case_id, row[0], level, author, at)

    def case_corrections(self, case_id: int) -> tuple[Correction, ...]:
        return tuple(Correction(*row) for row in self._conn().execute(
            "SELECT case_id, from_level, to_level, author, at FROM corrections WHERE case_id = ? ORDER BY at, id",
            (case_id,)))

    def corrected(self) -> tuple[tuple[str, str, str], ...]:
        """(text, level, author) of every correction with text to learn from, the latest word on
        each text only, oldest first."""
        return tuple(self._conn().execute(
            "SELECT document, to_level, author FROM corrections WHERE id IN"
            " (SELECT max(id) FROM corrections WHERE document != '' GROUP BY document) ORDER BY id"))

    def case_assignments(self, case_id: int) -> tuple[Assignment, ...]:
        return tuple(Assignment(*row) for row in self._conn().execute(
            "SELECT case_id, agent, role, reason, at FROM assignments WHERE case_id = ? ORDER BY at, id", (case_id,)))

    def set_password(self, agent: str, password_hash: str, at: float) -> None:
        with self._writing:
            self._conn().execute("INSERT INTO credentials (agent, hash, changed_at) VALUES (?, ?, ?)"
                                 " ON CONFLICT(agent) DO UPDATE SET hash = excluded.hash,"
                                 " changed_at = excluded.changed_at", (agent, password_hash, at))

    def password_hash(self, agent: str) -> str | None:
        row = self._conn().execute("SELECT hash FROM credentials WHERE agent = ?", (agent,)).fetchone()
        return row[0] if row else None
