"""DMARC aggregate reports: real reporters' files, their wrappers, the CLI, and rua mail in the daemon."""

from __future__ import annotations

import gzip
import io
import json
import smtplib
import subprocess
import sys
import time
import zipfile
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from mailpipe.monitors.dmarc_reports import ReportError, parse, reports, store_report
from mailpipe.monitors.runner import dmarc_series
from mailpipe.store import DmarcSummary
from mailpipe.store.sqlite import SQLiteStore
from tests.test_delivery import wait_until
from tests.test_lifecycle import metrics

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
    (gzip.compress(b"<")[:-4], "broken gzip"),
])
def test_what_is_not_a_report_is_refused_with_the_reason(data, reason) -> None:
    with pytest.raises(ReportError, match=reason):
        reports(data)


def test_a_zip_claiming_more_than_the_size_cap_is_not_inflated() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("bomb.xml", b"\0" * (65 * 1024 * 1024))
    with pytest.raises(ReportError, match="expands beyond"):
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
