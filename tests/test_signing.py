"""DKIM signing: dkimpy's DKIM with OpenSSL's signatures, exactly what dkimpy itself would write.

RSASSA-PKCS1-v1_5 and Ed25519 are deterministic, so the same key, message and clock must give
the same bytes as dkimpy's pure-Python signer, and RFC 8463's published example must come out
as published.
"""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import Callable

import dkim
import pytest

from mailpipe import keys
from mailpipe.daemon import SIGNING_THREADS
from mailpipe.keys import SigningKey
from mailpipe.offload import Offload
from mailpipe.outbound import signing
from mailpipe.outbound.replies import Replies, ReplyWork, header_fields
from mailpipe.outbound.signing import OpenSSLDKIM, Signer
from mailpipe.spool import Entry, Envelope, Message

RFC8463_TIME = 1528637909
# RFC 8463 appendix A.1: the two keys of football.example.com (the RSA one is 1024 bits).
RFC8463_ED25519 = b"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_RSA = b"""-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi
Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM
KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB
AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm
6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe
zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy
6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc
uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy
WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd
WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a
licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst
o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe
uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL
-----END RSA PRIVATE KEY-----
"""
# RFC 8463 appendix A.3 (and RFC 6376 appendix A's message): the b= values as published.
RFC8463_MESSAGE = (b"From: Joe SixPack <joe@football.example.com>\r\nTo: Suzie Q <suzie@shopping.example.net>\r\n"
                   b"Subject: Is dinner ready?\r\nDate: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
                   b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n\r\n"
                   b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n")
RFC8463_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"from", b"subject", b"date"]
RFC8463_ED25519_B = b"/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw=="
RFC8463_RSA_B = (b"F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGd"
                 b"aSGsgeefOsk2JzdA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=")
REPLY = (b"From: =?utf-8?b?5bGx55SwIOWkqumDjg==?= <support@example.test>\r\nTo: customer@example.org\r\n"
         b"Cc: lead@example.test\r\nSubject: Re: [#12] question\r\nDate: Mon, 23 Nov 2026 10:00:00 +0900\r\n"
         b"Message-ID: <reply-12@example.test>\r\nIn-Reply-To: <q-12@example.org>\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: text/plain; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: 7bit\r\n"
         b"X-Unsigned: not in the list\r\n\r\n\x1b$B$*@$OC$K$J$C$F$*$j$^$9!#\x1b(B\r\n")


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("example.test", "rsa", "rsa-sha256", keys.generate("rsa-sha256"))


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return SigningKey("example.test", "ed", "ed25519-sha256", keys.generate("ed25519-sha256"))


@pytest.fixture
def frozen_clock(monkeypatch) -> None:
    """Both signers read t= from ``time.time()`` and take no clock: their modules' ``time`` is
    replaced (only theirs), so that they agree on t= and the RFC's t= can be reproduced."""
    frozen = types.SimpleNamespace(time=lambda: RFC8463_TIME)
    monkeypatch.setattr(dkim, "time", frozen)
    monkeypatch.setattr(signing, "time", frozen)


def dns_for(*signing_keys: SigningKey) -> Callable[..., bytes | None]:
    records = {f"{k.selector}._domainkey.{k.domain}.": k.public_record().encode() for k in signing_keys}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.decode().rstrip(".") + ".")

    return lookup


def b_tag(field: bytes) -> bytes:
    """The signature of a DKIM-Signature field, unfolded."""
    return b"".join(dkim.util.parse_tag_value(field.split(b":", 1)[1])[b"b"].split())


@pytest.mark.parametrize(("algorithm", "selector", "private", "published"), [
    ("ed25519-sha256", "brisbane", RFC8463_ED25519, RFC8463_ED25519_B),
    ("rsa-sha256", "test", RFC8463_RSA, RFC8463_RSA_B)], ids=["ed25519", "rsa"])
def test_the_rfc_8463_example_signatures_come_out_as_published_and_as_dkimpy_writes_them(
        frozen_clock, algorithm, selector, private, published) -> None:
    key = SigningKey("football.example.com", selector, algorithm, private)
    relaxed = (b"relaxed", b"relaxed")
    ours = OpenSSLDKIM(RFC8463_MESSAGE).sign_with(key, RFC8463_HEADERS, canonicalize=relaxed)
    dkimpys = dkim.DKIM(RFC8463_MESSAGE).sign(selector.encode(), b"football.example.com", private,
                                              signature_algorithm=algorithm.encode(),
                                              include_headers=RFC8463_HEADERS, canonicalize=relaxed)
    assert b_tag(ours) == published
    assert ours == dkimpys


@pytest.mark.parametrize(("message", "include"), [
    (REPLY, [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"content-type", b"from"]),
    (REPLY.replace(b"MIME-Version", b"Cc:  second\r\n\tfolded\r\nX-Mailer: x\r\ncc: third\r\nMIME-Version"),
     [b"cc", b"from", b"cc", b"x-mailer", b"cc", b"cc", b"from"]),
], ids=["reply", "repeated-fields"])
def test_an_rsa_2048_signature_is_byte_for_byte_what_dkimpys_own_signer_writes(
        frozen_clock, rsa_key, message, include) -> None:
    ours = OpenSSLDKIM(message).sign_with(rsa_key, include)
    dkimpys = dkim.DKIM(message).sign(b"rsa", b"example.test", rsa_key.private_key, include_headers=include)
    assert ours == dkimpys


@pytest.mark.parametrize("second_include", [
    [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"content-type", b"from"],
    [b"from", b"subject", b"x-unsigned", b"from"],
], ids=["same-fields", "other-fields"])
def test_a_second_signature_of_one_message_is_what_dkimpy_writes_for_it_alone(
        frozen_clock, rsa_key, ed_key, second_include) -> None:
    """The signed fields are canonicalised once per message: the second signature (dual signing)
    must come out as if it were the only one."""
    message = OpenSSLDKIM(REPLY)
    message.sign_with(rsa_key, [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"content-type", b"from"])
    ours = message.sign_with(ed_key, second_include)
    dkimpys = dkim.DKIM(REPLY).sign(b"ed", b"example.test", ed_key.private_key, signature_algorithm=b"ed25519-sha256",
                                    include_headers=second_include)
    assert ours == dkimpys


@pytest.mark.parametrize("message", [
    REPLY,
    REPLY.replace(b"\r\n", b"\n"),
    REPLY.replace(b"\r\n\r\n", b"\n\r\n").replace(b"7bit\r\n", b"7bit\n") + b"bare LF\nand CR\ralone\r\n\r\n\r\n",
    b"From: a@example.test\r\nSubject: folded\r\n\tacross lines\r\n\r\n",
    b"From: a@example.test\r\nSubject: no empty line, no body\r\n",
    b"From: a@example.test\r\nSubject: no line end at all",
    b"\r\nA message that starts with its body\r\n",
    b"From sender@example.test Mon Nov 23 10:00:00 2026\nFrom: a@example.test\n\nbody\n\nsecond paragraph\n",
], ids=["crlf", "lf", "mixed", "folded-no-body", "no-empty-line", "no-line-end", "body-only", "mbox-from-line"])
def test_the_message_is_read_as_dkimpys_own_parser_reads_it(message) -> None:
    headers, body = dkim.rfc822_parse(message)
    ours = OpenSSLDKIM(message)
    assert (ours.headers, ours.body) == (headers, body)


def test_a_header_line_dkimpy_refuses_is_refused_as_dkimpy_refuses_it() -> None:
    with pytest.raises(dkim.MessageFormatError):
        OpenSSLDKIM(b"From: a@example.test\r\nnot a field\r\n\r\nbody\r\n")


def test_signatures_verify_with_dkimpys_verifier(rsa_key, ed_key) -> None:
    for key in (rsa_key, ed_key):
        signed = Signer([key]).sign(REPLY, "Example.TEST")
        assert dkim.verify(signed, dnsfunc=dns_for(key))


def test_from_is_signed_once_more_than_it_occurs_so_a_second_from_breaks_the_signature(rsa_key) -> None:
    signed = Signer([rsa_key]).sign(REPLY, "example.test")
    message = dkim.DKIM(signed)
    assert message.verify(dnsfunc=dns_for(rsa_key))
    assert message.include_headers.count(b"from") == 2
    forged = signed.replace(b"To: customer", b"From: ceo@example.test\r\nTo: customer", 1)
    assert not dkim.verify(forged, dnsfunc=dns_for(rsa_key))


def test_only_fields_of_the_list_that_are_present_are_signed(rsa_key) -> None:
    signed = Signer([rsa_key]).sign(REPLY, "example.test")
    message = dkim.DKIM(signed)
    assert message.verify(dnsfunc=dns_for(rsa_key))
    assert b"x-unsigned" not in message.include_headers and b"references" not in message.include_headers
    assert {b"cc", b"in-reply-to", b"content-type"} <= set(message.include_headers)


def test_each_key_of_the_domain_adds_its_own_signature_and_both_verify(rsa_key, ed_key) -> None:
    signed = Signer([rsa_key, ed_key]).sign(REPLY, "example.test")
    message = dkim.DKIM(signed)
    lookup = dns_for(rsa_key, ed_key)
    assert message.verify(idx=0, dnsfunc=lookup) and message.signature_fields[b"a"] == b"rsa-sha256"
    assert message.verify(idx=1, dnsfunc=lookup) and message.signature_fields[b"a"] == b"ed25519-sha256"
    assert signed.endswith(REPLY)


def test_mail_of_a_domain_without_a_key_goes_out_unsigned(rsa_key) -> None:
    assert Signer([rsa_key]).sign(REPLY, "other.test") == REPLY


def test_a_key_is_parsed_once_however_many_messages_it_signs(rsa_key) -> None:
    first = rsa_key.loaded
    Signer([rsa_key]).sign(REPLY, "example.test")
    assert rsa_key.loaded is first


def test_replies_in_flight_are_signed_at_the_same_time_off_the_event_loop(rsa_key) -> None:
    """OpenSSL signs without the GIL: a signature in a thread overlaps the other replies' work.
    Each signer waits until the other has started; signed one after the other (or on the event
    loop) the first would wait alone and the barrier break."""
    meeting = threading.Barrier(2, timeout=30)

    class MeetingSigner(Signer):
        def sign(self, raw: bytes, domain: str) -> bytes:
            meeting.wait()
            return super().sign(raw, domain)

    # Signing reads the signer and its threads alone: the store, spool, mailboxes and metrics are never reached.
    threads = Offload("dkim-sign", SIGNING_THREADS)
    replies = Replies((), None, 0, None, MeetingSigner([rsa_key]), threads, None, None, "mx.example.test", None)
    envelope = Envelope("support@example.test", ("customer@example.org",), "", "", "submission", "yamada")
    works = [ReplyWork(Message(Entry(f"q{n}", "active", envelope, 0.0, len(REPLY), 0, 0, 1, 0.0, ""), REPLY),
                       parsed=header_fields(REPLY), data=REPLY) for n in range(2)]

    async def in_flight() -> list[ReplyWork]:
        return await asyncio.gather(*(replies.sign_off_loop(work) for work in works))

    try:
        signed = asyncio.run(in_flight())
    finally:
        threads.close()
    for work in signed:
        assert dkim.verify(work.data, dnsfunc=dns_for(rsa_key))
