"""Every row of the store out as (table, row) and back in: ``mailpipe store export`` / ``import``.

Part of ``SQLStore`` (which inherits it): how a SQLite store moves to PostgreSQL. The dialect
subclass supplies ``_after_load`` (for PostgreSQL, moving its id sequences past the ids that
arrived); the import is one of ``base``'s write transactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from mailpipe.store import StoreError
from mailpipe.store.base import Connection, SQLBase

# Every table, parents before children: the order export writes and import reads.
TABLES = ("customers", "cases", "messages", "assignments", "agent_state", "credentials", "dmarc_reports",
          "dmarc_records", "case_notes", "incidents", "incident_customers", "corrections", "sent_messages")


class TransferQueries(SQLBase):
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
        with self._transaction() as conn:
            if conn.execute("SELECT count(*) FROM customers").fetchone()[0]:
                raise StoreError("the store to import into already has customers: import into an empty one")
            known: dict[str, frozenset[str]] = {}
            for table, row in rows:
                if table not in TABLES:
                    raise StoreError(f"unknown table {table!r} in the export")
                if table not in known:
                    known[table] = frozenset(c[0] for c in conn.execute(f"SELECT * FROM {table} LIMIT 0").description)
                if unknown := sorted(set(row) - known[table]):  # names go into SQL: only the table's own
                    raise StoreError(f"unknown column(s) {', '.join(map(repr, unknown))} of table {table!r}"
                                     " in the export")
                columns = ", ".join(row)
                conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})",
                             tuple(row.values()))
                count += 1
            self._after_load(conn)
        return count

    def _after_load(self, conn: Connection) -> None:
        """Whatever the dialect needs after rows arrived with their own ids."""
