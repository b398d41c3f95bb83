"""Inbound SPF, DKIM and DMARC against a real DNS server serving the test zones."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import re
import smtplib
import socket
import subprocess
import sys
import time
import weakref
from email.header import decode_header, make_header

import dns.exception
import dns.resolver
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailpipe import auth, dkim_limits
from mailpipe import config as configuration
from mailpipe.data import shipped
from mailpipe.deliver.maildir import MaildirDeliverer
from mailpipe.metrics import Metrics
from mailpipe.monitors import dns_checks
from mailpipe.spool import Entry, Envelope, Message
from mailpipe.store.sqlite import SQLiteStore
from mailpipe.triage import rules, stages
from mailpipe.triage.work import Work
from tests.dns_peer import DKIM_SELECTOR, Unbound, sign, without_dkim, zones_for_tests

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: support@example.test\r\nSubject: hello\r\n"
           b"Message-ID: <a1@example.test>\r\n\r\nHello.\r\n")
SPOOFED = (b"From: CEO <ceo@bank.test>\r\nTo: support@example.test\r\nSubject: urgent wire\r\n"
           b"Message-ID: <s1@bank.test>\r\n\r\nPay now.\r\n")


@pytest.fixture
def resolver(dns_server):
    previous = dns.resolver.default_resolver
    auth.configure_resolver([("127.0.0.1", dns_server.port)])
    yield
    dns.resolver.default_resolver = previous


@pytest.fixture
def key_rotated_after_a_cached_lookup():
    """A cached resolver that verified a signature, then the signing domain's keys left DNS."""
    server = Unbound(zones_for_tests())
    previous = dns.resolver.default_resolver
    auth.configure_resolver([("127.0.0.1", server.port)], cache=True)
    auth.verify(sign(MESSAGE), "alice@example.test", "127.0.0.1", "mx.example.test", "alice@example.test")
    server.stop()
    server = Unbound(without_dkim(zones_for_tests()), port=server.port)
    yield
    dns.resolver.default_resolver = previous
    server.stop()


def test_a_cached_answer_serves_until_its_ttl_ends(key_rotated_after_a_cached_lookup) -> None:
    verdict = auth.verify(sign(MESSAGE), "alice@example.test", "127.0.0.1", "mx.example.test", "alice@example.test")
    assert verdict.dkim == (("pass", "example.test"),)


@pytest.fixture
def cached_resolver():
    """A cached resolver, as the daemon's, and its server (tests may stop or restart it)."""
    server = Unbound(zones_for_tests())
    previous = dns.resolver.default_resolver
    auth.configure_resolver([("127.0.0.1", server.port)], cache=True)
    yield server
    dns.resolver.default_resolver = previous
    server.stop()


def test_a_cached_resolver_remembers_a_missing_name_for_its_negative_ttl_after_the_servers_stop(
        cached_resolver) -> None:
    missing = "nothing.example.test"  # NXDOMAIN with example.test's SOA: a resolver may remember it
    with pytest.raises(dns.resolver.NXDOMAIN):
        dns.resolver.resolve(missing, "TXT")
    cached_resolver.stop()
    with pytest.raises(dns.resolver.NXDOMAIN):
        dns.resolver.resolve(missing, "TXT", lifetime=2)


def test_a_remembered_missing_name_does_not_keep_the_message_checked_alive(cached_resolver) -> None:
    """Each answer from memory is a new exception: the one raised first carried a traceback
    through the frames of the check that asked, and with it the message being checked."""
    class Checked:
        pass

    def check(message: Checked) -> None:
        with contextlib.suppress(dns.resolver.NXDOMAIN):
            dns.resolver.resolve("_dmarc.nothing.example.test", "TXT")

    for _ in range(2):
        message = Checked()
        alive = weakref.ref(message)
        check(message)
        del message
        gc.collect()
        assert alive() is None


def test_monitors_read_dmarc_past_the_daemons_memory(cached_resolver) -> None:
    assert auth.dmarc_lookup("example.test") is not None
    cached_resolver.stop()
    without_dmarc = {**zones_for_tests(), "example.test": [r for r in zones_for_tests()["example.test"]
                                                           if not r.startswith("_dmarc")]}
    server = Unbound(without_dmarc, port=cached_resolver.port)
    try:
        assert auth.dmarc_lookup("example.test") is not None  # the daemon's, for the record's TTL
        checks = dns_checks.dmarc_checks("example.test", (), (), auth.fresh_resolver())
        assert [(c.name, c.ok, c.detail) for c in checks] == [("dmarc.record", False, "no DMARC record")]
    finally:
        server.stop()


def test_monitors_see_a_changed_record_at_once_past_the_cache(key_rotated_after_a_cached_lookup) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        auth.fresh_resolver().resolve(f"{DKIM_SELECTOR}._domainkey.example.test", "TXT")


def test_aligned_spf_and_dkim_pass_dmarc(resolver) -> None:
    verdict = auth.verify(sign(MESSAGE), "alice@example.test", "127.0.0.1", "mx.example.test", "alice@example.test")
    assert (verdict.spf, verdict.dkim, verdict.dmarc) == ("pass", (("pass", "example.test"),), "pass")
    assert verdict.header("mx.local") == ("mx.local; spf=pass smtp.mailfrom=example.test; "
                                          "dkim=pass header.d=example.test; dmarc=pass policy.dmarc=reject "
                                          "header.from=example.test")


def test_dkim_alone_aligns_when_the_envelope_sender_is_elsewhere(resolver) -> None:
    verdict = auth.verify(sign(MESSAGE), "bounces@other.example", "127.0.0.1", "mx", "alice@example.test")
    assert verdict.spf == "none"
    assert verdict.dmarc == "pass"


def test_a_tampered_body_fails_dkim(resolver) -> None:
    tampered = sign(MESSAGE).replace(b"Hello.", b"Hullo.")
    verdict = auth.verify(tampered, "", "127.0.0.2", "mx", "alice@example.test")
    assert verdict.dkim == (("fail", "example.test"),)
    assert verdict.dmarc == "fail"


def test_a_relaxed_body_with_long_runs_of_blanks_verifies_in_one_pass(resolver) -> None:
    blanks = b" \t" * 100_000  # dkimpy's own regex would backtrack over each run: minutes
    body = b"x" + blanks + b"x\r\ntrailing" + blanks + b"\r\n" + blanks
    signed = sign(MESSAGE.replace(b"Hello.\r\n", body), canonicalize=(b"relaxed", b"relaxed"))
    started = time.monotonic()
    verdict = auth.verify(signed, "alice@example.test", "127.0.0.1", "mx", "alice@example.test")
    assert verdict.dkim == (("pass", "example.test"),)
    assert time.monotonic() - started < 30


@settings(derandomize=True, max_examples=500, database=None)
@given(st.lists(st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b" \r\n", b"\t\r\n"]),
                max_size=40).map(b"".join))
def test_linear_blank_stripping_gives_what_dkimpys_regex_gives(body: bytes) -> None:
    assert dkim_limits.strip_trailing_whitespace(body) == re.sub(b"[\t ]+\r\n", b"\r\n", body)


def test_only_the_first_signatures_of_a_message_are_tried(resolver) -> None:
    signed = sign(MESSAGE)
    signature = signed[:signed.index(b"From:")]
    verdict = auth.verify(signature * 20 + signed, "alice@example.test", "127.0.0.1", "mx", "alice@example.test")
    assert verdict.dkim == (("pass", "example.test"),) * auth.MAX_DKIM_SIGNATURES


def test_a_signature_naming_thousands_of_fields_is_a_permerror_untried(resolver) -> None:
    names = b":".join(b"x-field-%d" % n for n in range(3000))
    head, body = sign(MESSAGE).replace(b" h=", b" h=" + names + b":", 1).split(b"\r\n\r\n", 1)
    hostile = head + b"".join(b"\r\nX-F: %d" % n for n in range(6000)) + b"\r\n\r\n" + body
    verdict = auth.verify(hostile, "alice@example.test", "127.0.0.1", "mx", "alice@example.test")
    assert verdict.dkim == (("permerror", "example.test"),)


@pytest.mark.parametrize("bits", [("modulus", 8192), ("publicExponent", 4096)])
def test_a_key_longer_than_any_signer_uses_does_not_verify(bits: tuple[str, int]) -> None:
    key = {"modulus": (1 << 2047) + 1, "publicExponent": 65537}
    key[bits[0]] = (1 << (bits[1] - 1)) + 1
    assert dkim_limits.rsa_verify(hashlib.sha256(b"m"), b"\x01" * 256, key) is False


def test_a_spoofed_from_fails_spf_and_dmarc_with_the_published_policy(resolver) -> None:
    verdict = auth.verify(SPOOFED, "ceo@bank.test", "127.0.0.1", "mx", "ceo@bank.test")
    assert (verdict.spf, verdict.dkim, verdict.dmarc, verdict.dmarc_policy) == ("fail", (), "fail", "reject")


def test_a_domain_without_records_is_none_not_an_error(resolver) -> None:
    verdict = auth.verify(MESSAGE, "bob@example.org", "127.0.0.1", "mx", "bob@example.org")
    assert (verdict.spf, verdict.dmarc) == ("none", "none")


def test_a_dmarc_record_with_whitespace_around_the_equals_signs_is_applied(resolver) -> None:
    spoofed = SPOOFED.replace(b"bank.test", b"spaced.test")
    verdict = auth.verify(spoofed, "ceo@spaced.test", "127.0.0.2", "mx", "ceo@spaced.test")
    assert (verdict.dmarc, verdict.dmarc_policy) == ("fail", "reject")


def test_a_dmarc_record_whose_rua_lacks_a_scheme_still_applies_its_policy(resolver) -> None:
    verdict = auth.verify(MESSAGE.replace(b"example.test", b"noscheme.test"), "a@noscheme.test", "127.0.0.2", "mx",
                          "alice@noscheme.test")
    assert (verdict.dmarc, verdict.dmarc_policy) == ("fail", "none")


def _text(value: str | None) -> str:
    return str(make_header(decode_header(value or "")))


def _daemon_with_vip(make_daemon, tmp_path, address: str):
    daemon = make_daemon()
    customers = tmp_path / "vip.csv"
    customers.write_text(f"address,name,vip\n{address},A VIP,yes\n")
    subprocess.run([sys.executable, "-m", "mailpipe", "customers", "import", str(customers), "--config",
                    str(daemon.config_path)], check=True, capture_output=True)
    return daemon


def test_a_vip_address_failing_dmarc_is_not_treated_as_vip(make_daemon, tmp_path) -> None:
    daemon = _daemon_with_vip(make_daemon, tmp_path, "ceo@bank.test")
    forged_result = b"Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("ceo@bank.test", ["support@example.test"], forged_result + SPOOFED)
    (delivered,) = daemon.delivered()
    (result,) = delivered.get_all("Authentication-Results")
    assert result.startswith("mx.example.test; spf=fail") and "dmarc=fail policy.dmarc=reject" in result
    assert "VIP_CUSTOMER" not in _text(delivered["X-Mailpipe-Rules"])


def test_a_signed_aligned_mail_from_a_vip_counts_as_vip(make_daemon, tmp_path) -> None:
    daemon = _daemon_with_vip(make_daemon, tmp_path, "alice@example.test")
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("alice@example.test", ["support@example.test"], sign(MESSAGE))
    (delivered,) = daemon.delivered()
    assert "dkim=pass header.d=example.test" in delivered["Authentication-Results"]
    assert "VIP_CUSTOMER(3)" in _text(delivered["X-Mailpipe-Rules"])


def test_authentication_outlasting_its_bound_gives_temperror_and_the_mail_goes_on(monkeypatch, tmp_path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a DNS server that never answers
    silent.bind(("127.0.0.1", 0))
    previous = dns.resolver.default_resolver
    monkeypatch.setattr(auth, "_DNS_TIMEOUT", 1.0)
    monkeypatch.setattr(stages, "AUTH_TIMEOUT", 0.3)
    auth.configure_resolver([("127.0.0.1", silent.getsockname()[1])])
    config = configuration.load(None)
    store = SQLiteStore(tmp_path / "store.sqlite")
    triage = stages.Triage(rules.load(shipped("rules")), config.agents, config.triage, store, "mx", Metrics(),
                           MaildirDeliverer(tmp_path / "mail"))
    entry = Entry("Q1", "active", Envelope("ceo@bank.test", ("support@localhost",), "127.0.0.1", "mx", "inbound"),
                  time.time(), len(SPOOFED), 0, 0, 1, 0.0, "")

    async def run() -> Work:
        return await triage.authenticate(triage.parse(Work(Message(entry, SPOOFED))))

    try:
        started = time.monotonic()
        work = asyncio.run(run())
    finally:
        dns.resolver.default_resolver = previous
        store.close()
        silent.close()
    assert (work.auth.spf, work.auth.dmarc) == ("temperror", "temperror")
    assert time.monotonic() - started < 10
