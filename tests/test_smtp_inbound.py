"""The inbound listener, spoken to over real SMTP on loopback."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.conftest import Daemon


def message(subject: str = "Help", body: str = "It does not work.", extra: str = "") -> bytes:
    return (f"From: Customer <customer@example.org>\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.monotonic_ns()}@example.org>\r\n{extra}\r\n{body}\r\n").encode()


def raw_session(port: int, *lines: bytes, read_timeout: float = 5.0) -> list[bytes]:
    """Send raw protocol lines, one reply read after each; returns the replies, greeting first."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        reader = sock.makefile("rb")
        replies = [reader.readline()]
        for line in lines:
            sock.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            replies.append(reply)
        return replies


def test_accepted_mail_is_queued_with_its_id_and_reaches_an_agents_maildir(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo("client.example.org")
        client.mail("customer@example.org")
        client.rcpt("support@example.test")
        code, reply = client.data(message(body="Hello from the test"))
    assert code == 250
    assert reply.startswith(b"2.0.0 Ok: queued as ")
    queue_id = reply.split()[-1].decode()
    (delivered,) = daemon.delivered()
    assert delivered["X-Mailpipe-Queue-Id"] == queue_id
    assert delivered["X-Mailpipe-Owner"].split()[0] in ("yamada", "smith")
    assert "by mx.example.test (mailpipe) with ESMTP id " + queue_id in delivered["Received"]
    assert delivered.get_payload().strip() == "Hello from the test"


def test_mail_for_another_domain_is_refused_as_relaying(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.mail("spammer@example.org")
        code, reply = client.rcpt("victim@gmail.com")
    assert (code, reply[:5]) == (550, b"5.7.1")
    assert b"Relay access denied" in reply


def test_unknown_mailbox_in_our_domain_is_refused(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.mail("customer@example.org")
        code, reply = client.rcpt("nobody@example.test")
    assert (code, reply[:5]) == (550, b"5.1.1")


def test_postmaster_is_always_accepted(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.mail("")
        assert client.rcpt("postmaster@example.test")[0] == 250
        assert client.rcpt("<postmaster>")[0] == 250


def test_recipient_addresses_match_case_insensitively(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.mail("customer@example.org")
        assert client.rcpt("Support@Example.TEST")[0] == 250


def test_ehlo_advertises_size_8bitmime_smtputf8_and_enhanced_codes(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        assert client.has_extn("size") and client.esmtp_features["size"] == str(25 * 1024 * 1024)
        assert client.has_extn("8bitmime")
        assert client.has_extn("smtputf8")
        assert client.has_extn("enhancedstatuscodes")
        assert not client.has_extn("starttls")


def test_declared_size_over_the_limit_is_refused_at_mail_from(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"max_message_size": 10_000}})
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        code, reply = client.mail("customer@example.org", ["SIZE=20000"])
    assert (code, reply[:5]) == (552, b"5.3.4")


def test_data_over_the_size_limit_is_refused_and_not_delivered(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"max_message_size": 10_000}})
    oversize = b"Subject: big\r\n\r\n" + (b"y" * 900 + b"\r\n") * 20 + b".\r\n"
    replies = raw_session(daemon.port, b"EHLO c\r\n", b"MAIL FROM:<a@example.org>\r\n",
                          b"RCPT TO:<support@example.test>\r\n", b"DATA\r\n", oversize)
    assert replies[5].startswith(b"552 5.3.4")
    assert daemon.delivered(timeout=1) == []


@pytest.mark.parametrize("body", [b"line one\nline two", b"line one\rline two"], ids=["bare-lf", "bare-cr"])
def test_bare_line_ends_are_refused_as_smuggling_risk(daemon: Daemon, body: bytes) -> None:
    replies = raw_session(daemon.port, b"EHLO c\r\n", b"MAIL FROM:<a@example.org>\r\n",
                          b"RCPT TO:<support@example.test>\r\n", b"DATA\r\n",
                          b"Subject: x\r\n\r\n" + body + b"\r\n.\r\n", b"QUIT\r\n")
    assert replies[5].startswith(b"554 5.6.0")
    assert b"bare CR or LF" in replies[5]
    assert replies[6].startswith(b"221")


def test_nul_bytes_are_refused(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("customer@example.org", ["support@example.test"], message(body="a\0b"))
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (554, b"5.6.0")


def test_a_10000_character_line_in_the_body_is_delivered_intact(daemon: Daemon) -> None:
    long_line = "<p>" + "x" * 9994 + "</p>"
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"], message(body=long_line))
    (delivered,) = daemon.delivered()
    assert delivered.get_payload().strip() == long_line


def test_a_10000_character_command_line_gets_500_and_the_session_continues(daemon: Daemon) -> None:
    replies = raw_session(daemon.port, b"EHLO c\r\n", b"MAIL FROM:<" + b"a" * 10_000 + b"@example.org>\r\n",
                          b"NOOP\r\n")
    assert replies[2].startswith(b"500 5.5.2")
    assert replies[3].startswith(b"250")


def test_too_many_recipients_get_452(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"max_recipients": 2}})
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.mail("customer@example.org")
        assert client.rcpt("support@example.test")[0] == 250
        assert client.rcpt("help@example.test")[0] == 250
        code, reply = client.rcpt("postmaster@example.test")
    assert (code, reply[:5]) == (452, b"4.5.3")


def test_a_silent_client_is_told_421_and_disconnected(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"idle_timeout": "1s"}})
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        started = time.monotonic()
        assert reader.readline().startswith(b"421 4.4.2")
        assert reader.readline() == b""
        assert 0.5 < time.monotonic() - started < 5


def test_a_client_stalling_in_data_is_cut_off_after_the_data_timeout(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"data_timeout": "1s", "idle_timeout": "30s"}})
    replies = raw_session(daemon.port, b"EHLO c\r\n", b"MAIL FROM:<a@example.org>\r\n",
                          b"RCPT TO:<support@example.test>\r\n", b"DATA\r\n", b"Subject: half a message\r\n")
    assert replies[4].startswith(b"354")
    assert replies[5].startswith(b"421 4.4.2")
    assert daemon.delivered(timeout=1, expect=1) == []


def test_connections_over_the_per_address_limit_get_421(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"max_connections_per_ip": 2}})
    held = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(2)]
    try:
        for sock in held:
            assert sock.makefile("rb").readline().startswith(b"220")
        with socket.create_connection(("127.0.0.1", daemon.port)) as third:
            assert third.makefile("rb").readline().startswith(b"421 4.7.0")
    finally:
        for sock in held:
            sock.close()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        assert client.noop()[0] == 250


def test_500_connections_at_once_are_served_or_refused_with_421_and_the_daemon_survives(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"max_connections": 200, "max_connections_per_ip": 1000}})
    greetings: list[bytes] = []
    lock = threading.Lock()
    barrier = threading.Barrier(500)

    def connect() -> None:
        barrier.wait()
        try:
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=20) as sock:
                line = sock.makefile("rb").readline()
                time.sleep(0.5)
        except OSError as exc:
            line = repr(exc).encode()
        with lock:
            greetings.append(line)

    threads = [threading.Thread(target=connect) for _ in range(500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served = sum(g.startswith(b"220") for g in greetings)
    refused = sum(g.startswith(b"421 4.7.0") for g in greetings)
    assert served + refused == 500, [g for g in greetings if g[:3] not in (b"220", b"421")][:5]
    assert served >= 200
    assert refused > 0
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"], message())
    assert len(daemon.delivered()) == 1


def test_forged_internal_headers_from_outside_are_removed(daemon: Daemon) -> None:
    forged = "X-Mailpipe-Urgency: critical 99\r\nX-Mailpipe-Owner: boss\r\n\tcontinued\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"], message(extra=forged))
    (delivered,) = daemon.delivered()
    (urgency,) = delivered.get_all("X-Mailpipe-Urgency")
    assert urgency != "critical 99"
    (owner,) = delivered.get_all("X-Mailpipe-Owner")
    assert "boss" not in owner
    assert "continued" not in delivered.as_string()


def test_the_same_sender_always_reaches_the_same_agent(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        for _ in range(3):
            client.sendmail("returning@example.org", ["support@example.test"], message())
    owners = {m["X-Mailpipe-Owner"] for m in daemon.delivered(expect=3)}
    assert len(owners) == 1


def test_swaks_delivers_8bit_japanese_mail_intact(daemon: Daemon) -> None:
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{daemon.port}", "--to", "support@example.test",
         "--from", "customer@example.org", "--header", "Subject: =?UTF-8?B?6YWN5L+h44Gn44GN44G+44Gb44KT?=",
         "--body", "メールが届きません。至急対応をお願いします。",
         "--add-header", "Content-Type: text/plain; charset=UTF-8"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    (delivered,) = daemon.delivered()
    assert "メールが届きません" in delivered.get_payload(decode=True).decode("utf-8")


def test_starttls_is_offered_and_works_when_a_certificate_is_configured(make_daemon, tmp_path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("mx.example.test", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    daemon = make_daemon({"inbound": {"tls_certificate": str(tmp_path / "server.pem"),
                                      "tls_key": str(tmp_path / "server.pem")}})
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo()
        client.sendmail("customer@example.org", ["support@example.test"], message())
    (delivered,) = daemon.delivered()
    assert "with ESMTPS id" in delivered["Received"]
