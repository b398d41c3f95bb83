"""DMARC aggregate reports: real reporters' files, their wrappers, the CLI, and rua mail in the daemon."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import smtplib
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from mailpipe.monitors import dmarc_reports
from mailpipe.monitors.dmarc_reports import ReportError, parse, reports, store_report
from mailpipe.monitors.runner import dmarc_series
from mailpipe.store import DmarcSummary
from mailpipe.store.sqlite import SQLiteStore
from tests.test_delivery import wait_until
from tests.test_lifecycle import metrics
from tests.test_outbound import rss_peak

FIXTURES = Path(__file__).parent / "fixtures" / "dmarc"
YAHOO = FIXTURES / "yahoo.com!nerou.de!1665532800!1665619199.xml"


@pytest.mark.parametrize(("name", "org", "report_id", "domain", "messages", "aligned"), [
    ("google.com!borschow.com!1549929600!1550015999.eml", "google.com", "949348866075514174", "borschow.com", 1,
     (False, False)),
    ("protection.outlook.com!example.com!1711756800!1711843200.xml", "Outlook.com", "cfeafefe4129445e8c81018bd9177197",
     "example.com", 1, (False, False)),
    ("yahoo.com!nerou.de!1665532800!1665619199.xml", "Yahoo", "1665623424.142074", "nerou.de", 1, (True, True)),
    ("rfc9990-sample.xml", "Sample Reporter", "3v98abbp8ya9n3va8yr8oa3ya", "example.com", 123, (True, False)),
])
def test_real_reports_parse(name, org, report_id, domain, messages, aligned) -> None:
    (report,) = reports((FIXTURES / name).read_bytes())
    assert (report.org_name, report.report_id, report.domain, report.messages) == (org, report_id, domain, messages)
    assert (report.records[0].dkim_aligned, report.records[0].spf_aligned) == aligned
    assert report.begin < report.end


def test_gzip_and_zip_wrapped_reports_parse() -> None:
    xml = YAHOO.read_bytes()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("yahoo.xml", xml)
    assert reports(gzip.compress(xml))[0].report_id == reports(archive.getvalue())[0].report_id == "1665623424.142074"


def test_an_attachment_is_found_whatever_type_it_declares() -> None:
    message = EmailMessage()
    message["Subject"] = "Report Domain: nerou.de Submitter: Yahoo"
    message.set_content("report attached")
    message.add_attachment(gzip.compress(YAHOO.read_bytes()), maintype="application", subtype="octet-stream",
                           filename="yahoo.com!nerou.de!1665532800!1665619199.xml.gz")
    assert reports(message.as_bytes())[0].org_name == "Yahoo"


@pytest.mark.parametrize(("data", "reason"), [
    (b"<feedback><report_metadata>", "not well-formed XML"),
    (b"<html></html>", "not <feedback>"),
    (b"Subject: hello\r\n\r\nno report here\r\n", "no XML, gzip or zip report"),
    (gzip.compress(b"<", mtime=0)[:-4], "broken gzip"),
])
def test_what_is_not_a_report_is_refused_with_the_reason(data, reason) -> None:
    with pytest.raises(ReportError, match=reason):
        reports(data)


def test_a_zip_claiming_more_than_the_size_cap_is_not_inflated() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("bomb.xml", b"\0" * (65 * 1024 * 1024))
    with pytest.raises(ReportError, match="expand beyond"):
        reports(archive.getvalue())


def test_a_report_is_stored_once_however_often_it_arrives(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    report = parse(YAHOO.read_bytes())
    assert store_report(store, report, 1.0) and not store_report(store, report, 2.0)
    (summary,) = store.dmarc_summary(0)
    assert (summary.reporter, summary.source_ip, summary.messages, summary.passed) == ("Yahoo", "23.88.125.229", 1, 1)
    store.close()


def test_dmarc_import_prints_one_json_object_per_report(tmp_path: Path) -> None:
    config = tmp_path / "mailpipe.toml"
    config.write_text(f'state_directory = "{tmp_path / "state"}"\n')
    result = subprocess.run([sys.executable, "-m", "mailpipe", "dmarc", "import", "--json", "--config", str(config),
                             *map(str, sorted(FIXTURES.glob("*.[xe][m][l]")))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert {d["org_name"] for d in documents} == {"google.com", "Outlook.com", "Yahoo", "Sample Reporter"}
    for document in documents:
        assert {"org_name", "report_id", "begin", "end", "domain", "messages", "records"} <= set(document)
        assert {"source_ip", "count", "disposition", "dkim_aligned", "spf_aligned"} <= set(document["records"][0])


def test_an_unreadable_file_is_named_and_fails_the_import(tmp_path: Path) -> None:
    (tmp_path / "junk.xml").write_text("<feedback>")
    result = subprocess.run([sys.executable, "-m", "mailpipe", "dmarc", "import", str(tmp_path / "junk.xml"),
                             "--config", "/dev/null"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and f"{tmp_path / 'junk.xml'}: not well-formed XML" in result.stderr


def test_the_largest_sources_keep_their_own_series_and_the_rest_are_other() -> None:
    rows = [DmarcSummary("Yahoo", f"192.0.2.{n}", messages=10 + n, dkim_aligned=10 + n, spf_aligned=0, passed=10 + n,
                         last_end=0) for n in range(4)]
    series = dmarc_series(rows, top=2)
    assert set(series) == {("Yahoo", "192.0.2.3"), ("Yahoo", "192.0.2.2"), ("Yahoo", "other")}
    assert series[("Yahoo", "other")] == (21, 21, 21, 0)  # messages, passed, dkim aligned, spf aligned


def test_mail_to_the_rua_address_feeds_the_gauges_and_reaches_no_agent(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"addresses": ["support@example.test", "dmarc@example.test"]},
                          "monitors": {"dmarc_report_addresses": ["dmarc@example.test"]}})
    now = int(time.time())
    xml = YAHOO.read_bytes().replace(b"1665532800", str(now - 86400).encode()).replace(b"1665619199",
                                                                                        str(now).encode())
    message = EmailMessage()
    message["From"] = "noreply@dmarc.yahoo.com"
    message["To"] = "dmarc@example.test"
    message["Subject"] = "Report Domain: nerou.de Submitter: Yahoo"
    message.set_content("This is an aggregate report from Yahoo.")
    message.add_attachment(gzip.compress(xml), maintype="application", subtype="gzip", filename="report.xml.gz")
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("noreply@dmarc.yahoo.com", ["dmarc@example.test"], message.as_bytes(policy=SMTP))
    key = ("mailpipe_dmarc_pass_ratio", (("reporter", "Yahoo"), ("source_ip", "23.88.125.229")))
    wait_until(lambda: metrics(daemon).get(key) == 1.0, timeout=20)
    assert metrics(daemon)[("mailpipe_dmarc_reports_total", (("result", "new"),))] == 1
    assert daemon.delivered(timeout=1) == []


# Bombs, built small in the test and huge once inflated, and the real reports beside them.

def gzip_of(head: bytes, filler: bytes, times: int, tail: bytes) -> bytes:
    """gzip of head + filler * times + tail, compressed piece by piece: never whole in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    pieces = [packer.compress(head)]
    block = filler * max(1, 1_000_000 // len(filler))
    for _ in range(times * len(filler) // len(block)):
        pieces.append(packer.compress(block))
    pieces += [packer.compress(tail), packer.flush()]
    return b"".join(pieces)


def peak_memory(function, *args):
    """(what ``function`` raised or returned, its peak Python heap in bytes)."""
    tracemalloc.start()
    try:
        outcome = function(*args)
    except ReportError as exc:
        outcome = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return outcome, peak


def test_seven_million_records_in_a_small_gzip_are_refused_quickly_in_bounded_memory() -> None:
    bomb = gzip_of(b"<feedback>", b"<record/>", 7_000_000, b"</feedback>")
    assert len(bomb) < 300_000
    started = time.monotonic()
    outcome, peak = peak_memory(reports, bomb)
    assert isinstance(outcome, ReportError) and "records" in str(outcome)
    assert peak < 32 * 1024 * 1024
    assert time.monotonic() - started < 60  # generous: it takes a fraction of a second


def test_elements_piled_up_outside_records_are_refused_in_bounded_memory() -> None:
    outcome, peak = peak_memory(reports, gzip_of(b"<feedback><report_metadata>", b"<x/>", 5_000_000,
                                                 b"</report_metadata></feedback>"))
    assert isinstance(outcome, ReportError) and "XML elements" in str(outcome)
    assert peak < 32 * 1024 * 1024


def test_a_zip_of_gzip_members_counts_every_inflated_byte_against_one_budget_per_message() -> None:
    xml = YAHOO.read_bytes()
    padded = gzip_of(xml[:xml.index(b"<record>")], b" ", 20 * 1024 * 1024, xml[xml.index(b"<record>"):])
    assert len(padded) < 100_000
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
        for number in range(5):  # each 20 MiB: under the cap alone, 100 MiB together
            handle.writestr(f"report{number}.xml.gz", padded)
    outcome, peak = peak_memory(reports, archive.getvalue())
    assert isinstance(outcome, ReportError) and "expand beyond" in str(outcome)
    assert peak < 32 * 1024 * 1024
    assert reports(padded)[0].report_id == "1665623424.142074"  # one of them alone is a report


def test_attachments_of_one_message_share_one_budget() -> None:
    xml = YAHOO.read_bytes()
    padded = gzip_of(xml[:xml.index(b"<record>")], b" ", 20 * 1024 * 1024, xml[xml.index(b"<record>"):])
    message = EmailMessage()
    message["Subject"] = "Report Domain: nerou.de Submitter: Yahoo"
    message.set_content("reports attached")
    for number in range(4):
        message.add_attachment(padded, maintype="application", subtype="gzip", filename=f"r{number}.xml.gz")
    with pytest.raises(ReportError, match="expand beyond"):
        reports(message.as_bytes())


def test_the_daemon_reads_one_message_s_reports_at_a_time(monkeypatch) -> None:
    running, most = [0], [0]

    def slow_reports(data: bytes) -> list:
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.05)
        running[0] -= 1
        return []

    monkeypatch.setattr(dmarc_reports, "reports", slow_reports)

    async def many() -> None:
        await asyncio.gather(*(dmarc_reports.read_reports(b"<feedback/>") for _ in range(6)))

    asyncio.run(many())
    assert most[0] == 1


def test_an_unclosed_xml_schema_wrapper_around_feedback_is_read() -> None:
    xml = YAHOO.read_bytes()
    body = xml[xml.index(b"<feedback"):]
    wrapped = (b'<?xml version="1.0" encoding="UTF-8"?>\n<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">\n'
               + body)  # and no </xs:schema>
    (report,) = reports(wrapped)
    assert (report.org_name, report.report_id, report.domain) == ("Yahoo", "1665623424.142074", "nerou.de")


def test_an_invalid_utf8_byte_in_a_domain_is_replaced_not_fatal() -> None:
    xml = YAHOO.read_bytes()
    broken = xml.replace(b"<header_from>nerou.de</header_from>", b"<header_from>nerou.de\x91</header_from>")
    assert broken != xml
    (report,) = reports(broken)
    assert report.records[0].header_from == "nerou.de\ufffd" and report.domain == "nerou.de"


@pytest.mark.parametrize("content_type", ["application/gzip", "application/x-gzip", "application/octet-stream"])
def test_a_mimecast_style_gzip_with_trailing_crlf_as_the_whole_message_body_is_read(content_type) -> None:
    body = base64.encodebytes(gzip.compress(YAHOO.read_bytes()) + b"\r\n")
    raw = (f"From: no-reply@au-1.mimecastreport.example\r\nSubject: Report domain: nerou.de Submitter: "
           f"mimecast.org\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n"
           "Content-Disposition: attachment;\r\n filename=\"mimecast.org!nerou.de!1665532800!1665619199.xml.gz\"\r\n"
           "MIME-Version: 1.0\r\n\r\n").encode() + body
    (report,) = reports(raw)
    assert report.report_id == "1665623424.142074"


def test_a_report_bomb_mailed_to_the_rua_address_is_refused_and_the_daemon_stays_small(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"addresses": ["support@example.test", "dmarc@example.test"]},
                          "monitors": {"dmarc_report_addresses": ["dmarc@example.test"]}})
    xml = YAHOO.read_bytes()
    message = EmailMessage()
    message["From"] = "noreply@dmarc.yahoo.com"
    message["To"] = "dmarc@example.test"
    message["Subject"] = "Report Domain: nerou.de Submitter: Yahoo"
    message.set_content("This is an aggregate report from Yahoo.")
    bomb = gzip_of(xml[:xml.index(b"<record>")], b"<record/>", 7_000_000, b"</feedback>")
    for number in range(3):
        message.add_attachment(bomb, maintype="application", subtype="gzip", filename=f"report{number}.xml.gz")
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("noreply@dmarc.yahoo.com", ["dmarc@example.test"], message.as_bytes(policy=SMTP))
        client.sendmail("customer@example.org", ["support@example.test"],
                        b"From: customer@example.org\r\nSubject: meanwhile\r\n\r\nhello\r\n")
    key = ("mailpipe_dmarc_reports_total", (("result", "invalid"),))
    wait_until(lambda: metrics(daemon).get(key) == 1, timeout=60)
    (delivered,) = daemon.delivered(timeout=30)
    assert delivered["Subject"].endswith("meanwhile")
    assert daemon.process is not None and rss_peak(daemon.process.pid) < 300 * 1024 * 1024
