"""The store's queries for deliverability: DMARC aggregate reports and provider incidents.

Part of ``SQLStore`` (which inherits them), kept apart from the desk's customers, cases and
replies: the same SQL subset for SQLite and PostgreSQL, written in ``base``'s write transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailpipe.addresses import canonical
from mailpipe.store import DmarcRow, DmarcSummary, IncidentRecord
from mailpipe.store.base import SQLBase


class DeliverabilityQueries(SQLBase):
    def record_sent(self, message_id: str, queue_id: str, at: float) -> None:
        """Notes that the send queue is sending mail with ``message_id`` (before each attempt:
        once is enough, a retry changes nothing)."""
        with self._transaction() as conn:
            conn.execute("INSERT INTO sent_messages (message_id, queue_id, at) VALUES (?, ?, ?)"
                         " ON CONFLICT DO NOTHING", (message_id, queue_id, at))

    def sent_as(self, queue_id: str) -> bool:
        """Whether the send queue began sending the message it held as ``queue_id``."""
        return self._conn().execute("SELECT 1 FROM sent_messages WHERE queue_id = ? LIMIT 1",
                                    (queue_id,)).fetchone() is not None

    def sent_by_us(self, message_id: str) -> bool:
        """Whether the send queue sent mail with ``message_id`` (or, before it kept a history,
        an agent's reply did). Only a bounce of such mail is worth counting: anyone can mail us
        one claiming anything."""
        conn = self._conn()
        return (conn.execute("SELECT 1 FROM sent_messages WHERE message_id = ?", (message_id,)).fetchone() is not None
                or conn.execute("SELECT 1 FROM messages WHERE direction = 'out' AND message_id = ? LIMIT 1",
                                (message_id,)).fetchone() is not None)

    def record_dmarc_report(self, *, reporter: str, report_id: str, domain: str, begin: int, end: int,
                            records: Sequence[DmarcRow], at: float) -> bool:
        """False when this reporter's report was imported before (reports are re-sent, and the
        same file may be imported by hand too)."""
        with self._transaction() as conn:
            new = conn.execute("INSERT INTO dmarc_reports (reporter, report_id, domain, begin_at, end_at,"
                               " imported_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (reporter, report_id, domain, begin, end, at)).rowcount > 0
            if new:
                conn.executemany("INSERT INTO dmarc_records (reporter, report_id, source_ip, count, dkim_aligned,"
                                 " spf_aligned, disposition) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(reporter, report_id, r.source_ip, r.count, int(r.dkim_aligned),
                                   int(r.spf_aligned), r.disposition) for r in records])
        return new

    def dmarc_summary(self, since: int) -> tuple[DmarcSummary, ...]:
        """Per reporter and source IP, over reports whose period ended after ``since``."""
        rows = self._conn().execute(
            "SELECT r.reporter, r.source_ip, CAST(sum(r.count) AS BIGINT),"
            " CAST(sum(r.count * r.dkim_aligned) AS BIGINT), CAST(sum(r.count * r.spf_aligned) AS BIGINT),"
            " CAST(sum(CASE WHEN r.dkim_aligned + r.spf_aligned > 0 THEN r.count ELSE 0 END) AS BIGINT), max(d.end_at)"
            " FROM dmarc_records r JOIN dmarc_reports d USING (reporter, report_id) WHERE d.end_at >= ?"
            " GROUP BY r.reporter, r.source_ip", (since,))
        return tuple(DmarcSummary(*row) for row in rows)

    def open_incident(self, provider: str, klass: str, sample: str, at: float) -> IncidentRecord:
        with self._writing:
            incident_id = self._conn().execute(
                "INSERT INTO incidents (provider, class, sample, started_at, last_seen_at) VALUES (?, ?, ?, ?, ?)"
                " RETURNING id", (provider, klass, sample, at, at)).fetchone()[0]
        found = self._incident(incident_id)
        assert found is not None
        return found

    def touch_incident(self, incident_id: int, at: float, customer: str) -> IncidentRecord:
        """One more refusal in this incident, to ``customer``'s mail."""
        with self._transaction() as conn:
            conn.execute("UPDATE incidents SET last_seen_at = max(last_seen_at, ?), refusals = refusals + 1"
                         " WHERE id = ?", (at, incident_id))
            if customer:
                conn.execute("INSERT INTO incident_customers (incident_id, address) VALUES (?, ?)"
                             " ON CONFLICT DO NOTHING", (incident_id, canonical(customer)))
        found = self._incident(incident_id)
        assert found is not None
        return found

    def end_incident(self, incident_id: int, at: float) -> None:
        with self._writing:
            self._conn().execute("UPDATE incidents SET ended_at = ? WHERE id = ?", (at, incident_id))

    def incidents(self, *, active: bool = False, since: float = 0.0) -> tuple[IncidentRecord, ...]:
        """Active ones, or all that were still going at ``since``; newest first."""
        where = "ended_at IS NULL" if active else "(ended_at IS NULL OR ended_at >= ?)"
        rows = self._conn().execute(f"SELECT id FROM incidents WHERE {where} ORDER BY started_at DESC",
                                    () if active else (since,)).fetchall()
        return tuple(record for (incident_id,) in rows if (record := self._incident(incident_id)) is not None)

    def _incident(self, incident_id: int) -> IncidentRecord | None:
        conn = self._conn()
        row = conn.execute("SELECT id, provider, class, sample, started_at, last_seen_at, ended_at, refusals"
                           " FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            return None
        customers = tuple(a for (a,) in conn.execute("SELECT address FROM incident_customers WHERE incident_id = ?"
                                                     " ORDER BY address", (incident_id,)))
        return IncidentRecord(*row, customers=customers)
