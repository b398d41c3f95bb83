"""The embedded store: one SQLite file in WAL mode under the state directory.

Schema changes are numbered migrations applied in order and recorded in ``PRAGMA
user_version``; a database from a newer mailpipe is refused rather than guessed at. Connections
are per thread (the daemon calls it from worker threads); writes are short transactions.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from mailpipe.store import StoreError
from mailpipe.store.sql import SQLStore

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE customers (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL DEFAULT '',
        company TEXT NOT NULL DEFAULT '',
        plan TEXT NOT NULL DEFAULT '',
        vip INTEGER NOT NULL DEFAULT 0,
        phone TEXT NOT NULL DEFAULT '',
        notes TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE TABLE cases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        customer_id INTEGER NOT NULL REFERENCES customers(id),
        subject TEXT NOT NULL,
        status TEXT NOT NULL,
        level TEXT NOT NULL,
        score REAL NOT NULL,
        owner TEXT NOT NULL,
        escalated_to TEXT NOT NULL DEFAULT '',
        handler TEXT NOT NULL DEFAULT '',
        escalated_agent TEXT NOT NULL DEFAULT '',
        opened_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        first_response_at REAL
    );
    CREATE INDEX cases_customer ON cases (customer_id, status);
    CREATE INDEX cases_open ON cases (status, owner, handler, escalated_agent, level, opened_at);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        queue_id TEXT UNIQUE,
        message_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        subject TEXT NOT NULL,
        level TEXT NOT NULL DEFAULT '',
        score REAL NOT NULL DEFAULT 0,
        rules TEXT NOT NULL DEFAULT '',
        at REAL NOT NULL
    );
    CREATE INDEX messages_message_id ON messages (message_id);
    CREATE INDEX messages_case ON messages (case_id, at);
    CREATE TABLE assignments (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        queue_id TEXT NOT NULL,
        agent TEXT NOT NULL,
        role TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX assignments_case ON assignments (case_id);
    CREATE TABLE agent_state (
        agent TEXT PRIMARY KEY,
        away INTEGER NOT NULL DEFAULT 0,
        since REAL NOT NULL
    );
    """,
    """
    ALTER TABLE cases ADD COLUMN language TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN agent TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN in_reply_to TEXT NOT NULL DEFAULT '';
    CREATE INDEX messages_answers ON messages (case_id, in_reply_to, direction, at);
    ALTER TABLE customers ADD COLUMN last_autoreply_at REAL;
    ALTER TABLE customers ADD COLUMN last_autoreply_queue_id TEXT NOT NULL DEFAULT '';
    CREATE TABLE credentials (
        agent TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        changed_at REAL NOT NULL
    );
    """,
    """
    CREATE TABLE dmarc_reports (
        reporter TEXT NOT NULL,
        report_id TEXT NOT NULL,
        domain TEXT NOT NULL,
        begin_at INTEGER NOT NULL,
        end_at INTEGER NOT NULL,
        imported_at REAL NOT NULL,
        PRIMARY KEY (reporter, report_id)
    );
    CREATE INDEX dmarc_reports_end ON dmarc_reports (end_at);
    CREATE TABLE dmarc_records (
        reporter TEXT NOT NULL,
        report_id TEXT NOT NULL,
        source_ip TEXT NOT NULL,
        count INTEGER NOT NULL,
        dkim_aligned INTEGER NOT NULL,
        spf_aligned INTEGER NOT NULL,
        disposition TEXT NOT NULL,
        FOREIGN KEY (reporter, report_id) REFERENCES dmarc_reports (reporter, report_id)
    );
    CREATE INDEX dmarc_records_report ON dmarc_records (reporter, report_id);
    """,
    """
    CREATE TABLE case_notes (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        queue_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        text TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX case_notes_case ON case_notes (case_id, at);
    """,
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        class TEXT NOT NULL,
        sample TEXT NOT NULL,
        started_at REAL NOT NULL,
        last_seen_at REAL NOT NULL,
        ended_at REAL,
        refusals INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX incidents_active ON incidents (ended_at, provider);
    CREATE TABLE incident_customers (
        incident_id INTEGER NOT NULL REFERENCES incidents(id),
        address TEXT NOT NULL,
        PRIMARY KEY (incident_id, address)
    );
    """,
    """
    ALTER TABLE messages ADD COLUMN document TEXT NOT NULL DEFAULT '';
    CREATE TABLE corrections (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        queue_id TEXT UNIQUE,
        from_level TEXT NOT NULL,
        to_level TEXT NOT NULL,
        author TEXT NOT NULL,
        document TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX corrections_case ON corrections (case_id, at);
    """,
    """
    CREATE TABLE sent_messages (
        message_id TEXT PRIMARY KEY,
        queue_id TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    # Each reply's fate (queued, held, sent, deferred, bounced, deleted) with what decided it;
    # customers' phone numbers in E.164 (03-1234-5678 -> +81312345678, ``mailpipe.phones``),
    # filled here for the common spellings and kept by ``upsert_customer`` from now on.
    """
    ALTER TABLE messages ADD COLUMN fate TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN fate_detail TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN fate_at REAL;
    ALTER TABLE customers ADD COLUMN phone_key TEXT NOT NULL DEFAULT '';
    UPDATE customers SET phone_key = replace(replace(replace(replace(replace(phone, '-', ''), ' ', ''), '(', ''),
        ')', ''), '.', '');
    UPDATE customers SET phone_key = '+81' || substr(phone_key, 2) WHERE phone_key LIKE '0%';
    CREATE INDEX customers_phone ON customers (phone_key);
    """,
    # Whether the send queue began sending a queued message, asked by an inbound hand-off that
    # runs again (``sent_as``): the table keeps every message sent, so not by a scan.
    """
    CREATE INDEX sent_messages_queue ON sent_messages (queue_id);
    """,
)

def migrate(conn: sqlite3.Connection) -> int:
    """Applies the migrations this database has not seen; returns the schema version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(f"database schema {version} is newer than this mailpipe ({len(MIGRATIONS)})")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return len(MIGRATIONS)


class SQLiteStore(SQLStore):
    # SQLite's IMMEDIATE transaction holds the only write lock: rows need no locks of their own.
    _BEGIN = "BEGIN IMMEDIATE"
    writers = 1

    def __init__(self, path: Path):
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._generation = 0
        migrate(self._conn())

    def reconnect(self) -> None:
        """Each thread opens a new connection at its next use and closes its old one."""
        self._generation += 1

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "generation", 0) != self._generation and not conn.in_transaction:
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            conn.close()
            conn = None
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            self._local.generation = self._generation
            with self._lock:
                self._all.append(conn)
        return conn

    def migrate(self) -> int:
        return migrate(self._conn())

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
