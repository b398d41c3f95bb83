"""Bounded property-based fuzzing: the parsers that read what strangers send never raise
anything but their own declared errors. Derandomized with a fixed number of examples, so
``make test`` runs the same inputs every time and stays bounded."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import logging
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailpipe import addresses
from mailpipe.deliver import headers
from mailpipe.message import parse
from mailpipe.metrics import Metrics
from mailpipe.monitors import bounces
from mailpipe.monitors.dmarc_reports import ReportError, reports
from mailpipe.smtp.inbound import InboundHandler, RecipientPolicy, content_refusal
from mailpipe.smtp.server import Listener, ListenerSettings, readable
from mailpipe.spool import Spool
from tests.conftest import free_port

FUZZ = settings(derandomize=True, deadline=None, max_examples=300, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
YAHOO = (Path(__file__).parent / "fixtures" / "dmarc" / "yahoo.com!nerou.de!1665532800!1665619199.xml").read_bytes()

# Text as hostile senders write it: every control character, lone surrogates' bytes, encoded words.
_nasty_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60) | st.sampled_from([
    "=?utf-8?b?5bGx55Sw?=", "=?iso-2022-jp?b?GyRCOzNFRBsoQg==?=", "=?us-ascii?q?a=40b_=28?= <x@y>",
    "(c) mx; dmarc=pass",
    "\r\n", "\r", "\n", "\x00", "\x1b[31m", '"a\rb"@example.com', "<>", "<<a@b>>", "@", "a@", "@b",
])
_header_names = st.sampled_from(["From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Date",
                                 "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version",
                                 "Authentication-Results", "Auto-Submitted", "X-Mailpipe-Case", "Return-Path"])
_content_types = st.sampled_from([
    "text/plain", "text/plain; charset=iso-2022-jp", "text/plain; charset=shift_jis", "text/plain; charset=bogus",
    "text/html; charset=utf-8", "multipart/mixed; boundary=b", "multipart/alternative; boundary=\"b\"",
    "multipart/report; report-type=delivery-status; boundary=b", "message/delivery-status", "message/rfc822",
    "application/gzip", "multipart/mixed", "multipart/mixed; boundary=", "text/rfc822-headers",
])


@st.composite
def mails(draw: st.DrawFn) -> bytes:
    """A message: hostile header fields, a declared structure that may or may not hold, a body
    that may be base64, quoted-printable, 8-bit, binary or a delivery report."""
    fields = draw(st.lists(st.tuples(_header_names, _nasty_text), max_size=12))
    fields.append(("Content-Type", draw(_content_types)))
    head = "".join(f"{name}: {value}\r\n" for name, value in fields).encode("utf-8", "surrogateescape")
    parts = draw(st.lists(st.one_of(
        st.binary(max_size=300),
        _nasty_text.map(lambda text: text.encode("utf-8", "surrogateescape")),
        st.builds(lambda t, c: f"Content-Type: {c}\r\n\r\n{t}\r\n".encode("utf-8", "surrogateescape"),
                  _nasty_text, _content_types),
        st.just(b"Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\n"
                b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"),
        st.binary(max_size=200).map(lambda data: base64.encodebytes(data)),
    ), max_size=4))
    body = b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + draw(st.sampled_from([b"--b--\r\n", b""]))
    return head + b"\r\n" + body


@FUZZ
@given(st.one_of(mails(), st.binary(max_size=2000)))
def test_the_message_parser_never_raises(raw: bytes) -> None:
    parsed = parse(raw)
    assert isinstance(parsed.text, str) and isinstance(parsed.defects, tuple)
    assert isinstance(parsed.language, str)
    parsed.thread_ids  # noqa: B018  (a property that must not raise either)
    parsed.header("Subject")


@FUZZ
@given(st.one_of(mails(), st.binary(max_size=2000)), st.sampled_from(["", "MAILER-DAEMON@mx.example", "a@b"]))
def test_the_bounce_parser_never_raises(raw: bytes, mail_from: str) -> None:
    bounce = bounces.parse_bounce(raw, mail_from)
    assert bounce is None or isinstance(bounce, bounces.Bounce)
    assert isinstance(bounces.quoted_message_id(raw), str)


def _mutated(data: bytes, cuts: list[tuple[int, bytes]]) -> bytes:
    for at, inserted in cuts:
        position = at % (len(data) + 1)
        data = data[:position] + inserted + data[position + len(inserted) % 3:]
    return data


_xml_mutations = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from([
    b"", b"<", b">", b"&", b"&amp;", b"<![CDATA[", b"\xff", b"\x91", b"\x00", b"<record>", b"</record>", b"<x>",
    b"<!DOCTYPE f [<!ENTITY a \"aaaa\">]>", b"&a;", b"1e999", b"-1", b"99999999999999999999", b"nan",
    b"<?xml version='1.0' encoding='bogus'?>", b"<?xml version='1.0' encoding='utf-16'?>", b"\xef\xbb\xbf",
])), max_size=6)


def _wrapped(xml: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(xml)
    if how == "gzip+crlf":
        return gzip.compress(xml) + b"\r\n"
    if how == "zip":
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
            handle.writestr("r.xml", xml)
        return archive.getvalue()
    if how == "mail":
        return (b"Subject: report\r\nContent-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + base64.encodebytes(gzip.compress(xml)))
    return xml


@FUZZ
@given(st.one_of(
    st.binary(max_size=2000),
    st.tuples(_xml_mutations, st.sampled_from(["xml", "gzip", "gzip+crlf", "zip", "mail"])).map(
        lambda drawn: _wrapped(_mutated(YAHOO, drawn[0]), drawn[1])),
    st.binary(max_size=500).map(lambda data: gzip.compress(data)[: max(2, len(data) // 2)]),
))
def test_the_dmarc_report_parser_raises_only_report_errors(data: bytes) -> None:
    try:
        found = reports(data)
    except ReportError:
        return
    assert all(isinstance(report.messages, int) for report in found)


@FUZZ
@given(_nasty_text, st.binary(max_size=200))
def test_address_and_content_checks_never_raise(text: str, data: bytes) -> None:
    addresses.canonical(text)
    addresses.domain_of(text)
    assert addresses.syntax_problem(text) is None or isinstance(addresses.syntax_problem(text), str)
    RecipientPolicy(frozenset({"support@example.test"}), frozenset({"example.test"}), 10).refusal(text)
    content_refusal(data)
    readable(text)
    headers.claimed_authserv_id(b"Authentication-Results: " + text.encode("utf-8", "surrogateescape"))


class _Server:
    """An inbound listener with a real spool on its own loop thread, for the command fuzzer."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.errors: list[logging.LogRecord] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(directory, ready), daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def _run(self, directory: Path, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self.spool = Spool(directory / "inbound.sqlite")
        metrics = Metrics()
        handler = InboundHandler(RecipientPolicy(frozenset({"support@example.test"}), frozenset({"example.test"}), 5),
                                 self.spool, metrics, "mx.example.test")
        settings_ = ListenerSettings(name="inbound", host="127.0.0.1", port=self.port, hostname="mx.example.test",
                                     max_message_size=100_000, max_connections=50, max_connections_per_ip=50,
                                     idle_timeout=10, data_timeout=10, tls_context=None)
        self.listener = Listener(settings_, handler, metrics)
        self._loop.run_until_complete(self.listener.start())
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.drain(2), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.spool.close()


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]):
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    running = _Server(tmp_path_factory.mktemp("fuzz-smtp"))
    collector = _Collect(running.errors)
    logging.getLogger("mailpipe").addHandler(collector)
    yield running
    logging.getLogger("mailpipe").removeHandler(collector)
    running.stop()


_verbs = st.sampled_from([b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY", b"QUIT",
                          b"AUTH PLAIN", b"STARTTLS", b"BDAT", b"mail from:", b"XCLIENT"])
_arguments = st.one_of(
    st.binary(max_size=80).map(lambda data: data.replace(b"\n", b"")),
    _nasty_text.map(lambda text: text.encode("utf-8", "surrogateescape").replace(b"\n", b"")),
    st.sampled_from([b"<customer@example.org>", b"<support@example.test>", b"<>", b"<a@b> SIZE=999999999",
                     b"<a@b> SMTPUTF8 BODY=8BITMIME", b'<"a\rX-Inj: 1"@example.com>',
                     b"<\xff\xfe@example.org> SMTPUTF8",
                     b"<@route:a@b>", b"<a@[127.0.0.1]>", b"<a@[IPv6:::1]>", b"client.example.org"]),
)


@FUZZ
@given(st.lists(st.tuples(_verbs, _arguments), min_size=1, max_size=6), st.binary(max_size=300))
def test_the_smtp_command_parser_answers_every_line_and_never_fails_inside(server: _Server, commands, body) -> None:
    """Every line gets a reply with a status code; no handler error, no 451 'internal error'."""
    before = len(server.errors)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        for verb, argument in [*commands, (b"DATA", b"")]:
            sock.sendall(verb + (b" " + argument if argument and not verb.endswith(b":") else argument) + b"\r\n")
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            if not reply:  # the server hung up (QUIT, too many bad commands): it said why first
                break
            assert reply[:3].isdigit() and reply[:1] in b"2345", reply
            assert not reply.startswith(b"451 4.3.0 Internal"), reply
            if verb == b"QUIT" or reply.startswith(b"421"):
                break
            if reply.startswith(b"354"):
                sock.sendall(body.replace(b"\r\n.\r\n", b"\r\n..\r\n") + b"\r\n.\r\n")
                final = reader.readline()
                assert final[:3].isdigit() and not final.startswith(b"451"), final
    assert server.errors[before:] == [], [record.getMessage() for record in server.errors[before:]]
