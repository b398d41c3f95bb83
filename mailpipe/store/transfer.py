"""Every row of the store out as (table, row) and back in: ``mailpipe store export`` / ``import``.

Part of ``SQLStore`` (which inherits it): how a SQLite store moves to PostgreSQL. The dialect
subclass supplies ``_conn``, ``_BEGIN``, the write lock ``_writing`` and ``_after_load`` (for
PostgreSQL, moving its id sequences past the ids that arrived).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from mailpipe.store import StoreError

Connection = Any  # sqlite3.Connection, or the PostgreSQL adapter that speaks like one

# Every table, parents before children: the order export writes and import reads.
TABLES = ("customers", "cases", "messages", "assignments", "agent_state", "credentials", "dmarc_reports",
          "dmarc_records", "case_notes", "incidents", "incident_customers", "corrections")


class TransferQueries:
    _BEGIN: str
    _writing: threading.Lock

    def _conn(self) -> Connection:
        raise NotImplementedError

    def dump(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every row of every table, as (table, row): what ``mailpipe store export`` writes."""
        conn = self._conn()
        for table in TABLES:
            cursor = conn.execute(f"SELECT * FROM {table}")
            names = [column[0] for column in cursor.description]
            for row in cursor.fetchall():
                yield table, dict(zip(names, row, strict=True))

    def load(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Writes dumped rows into this (empty) store in one transaction; returns how many."""
        count = 0
        with self._writing:
            conn = self._conn()
            conn.execute(self._BEGIN)
            try:
                if conn.execute("SELECT count(*) FROM customers").fetchone()[0]:
                    raise StoreError("the store to import into already has customers: import into an empty one")
                for table, row in rows:
                    if table not in TABLES:
                        raise StoreError(f"unknown table {table!r} in the export")
                    columns = ", ".join(row)
                    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})",
                                 tuple(row.values()))
                    count += 1
                self._after_load(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return count

    def _after_load(self, conn: Connection) -> None:
        """Whatever the dialect needs after rows arrived with their own ids."""
