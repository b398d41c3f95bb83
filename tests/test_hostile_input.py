"""Hostile SMTP input, replayed over real SMTP: each attack gets its refusal at the command it
hides in, never a 451 after DATA, a traceback or a header carrying it."""

from __future__ import annotations

import smtplib
import socket
import time
from typing import BinaryIO

import pytest

from tests.conftest import Daemon
from tests.test_smtp_inbound import message, raw_session


def no_traceback(daemon: Daemon) -> None:
    log = daemon.log()
    assert "Traceback" not in log and "session error" not in log, log


def into_data(sock: socket.socket, sender: bytes = b"<customer@example.org>") -> BinaryIO:
    """HELO, MAIL, RCPT and DATA, each reply read; returns the reader for what follows."""
    reader = sock.makefile("rb")
    replies = [reader.readline()]
    for line in (b"HELO client.example.org\r\n", b"MAIL FROM:" + sender + b"\r\n",
                 b"RCPT TO:<support@example.test>\r\n", b"DATA\r\n"):
        sock.sendall(line)
        replies.append(reader.readline())
    assert sender != b"<customer@example.org>" or [r[:3] for r in replies] == [b"220", b"250", b"250", b"250", b"354"]
    return reader


@pytest.mark.parametrize("command", [b"EHLO", b"HELO"])
def test_invalid_utf8_in_ehlo_is_refused_with_501_at_the_command(daemon: Daemon, command: bytes) -> None:
    replies = raw_session(daemon.port, command + b" bad\xff\xfehost.example.org\r\n", b"EHLO ok.example.org\r\n",
                          b"QUIT\r\n")
    assert replies[1].startswith(b"501 5.5.4") and b"UTF-8" in replies[1]
    assert replies[2].startswith(b"250")  # the session goes on
    no_traceback(daemon)


def test_invalid_utf8_in_mail_from_with_smtputf8_is_refused_with_501_not_451_after_data(daemon: Daemon) -> None:
    replies = raw_session(daemon.port, b"EHLO client.example.org\r\n",
                          b"MAIL FROM:<caf\xc3\x28@example.org> SMTPUTF8\r\n",
                          b"MAIL FROM:<\xff\xfe@example.org> SMTPUTF8\r\n",
                          b"RCPT TO:<support@example.test>\r\n", b"QUIT\r\n")
    assert replies[2].startswith(b"501 5.1.7") and replies[3].startswith(b"501 5.1.7")
    assert replies[4].startswith(b"503")  # no sender was taken
    no_traceback(daemon)


def test_valid_utf8_with_smtputf8_is_still_accepted(daemon: Daemon) -> None:
    replies = raw_session(daemon.port, b"EHLO client.example.org\r\n",
                          "MAIL FROM:<顧客@example.org> SMTPUTF8\r\n".encode(), b"QUIT\r\n")
    assert replies[2].startswith(b"250")


@pytest.mark.parametrize("address", [
    b'<"a\rX-Inj: 1"@example.com>', b"<a\rX-Inj:1@example.com>", b'<"a\x00b"@example.com>', b'<"a\x1bb"@example.com>',
    b'<"a\x7fb"@example.com>', b'<"a\tb"@example.com>',
])
def test_a_control_character_in_an_address_is_refused_at_mail_and_rcpt(daemon: Daemon, address: bytes) -> None:
    replies = raw_session(daemon.port, b"EHLO client.example.org\r\n", b"MAIL FROM:" + address + b"\r\n",
                          b"MAIL FROM:<customer@example.org>\r\n", b"RCPT TO:" + address + b"\r\n", b"QUIT\r\n")
    assert replies[2].startswith(b"501 5.1.7"), replies
    assert replies[3].startswith(b"250")
    assert replies[4].startswith(b"501 5.1.3"), replies
    no_traceback(daemon)


def test_nothing_from_a_refused_sender_reaches_return_path(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        reader = into_data(sock, b'<"a\rX-Inj: 1"@example.com>')
        sock.sendall(message(subject="injected") + b".\r\nQUIT\r\n")
        reader.read()
    time.sleep(1)
    assert not any(b"X-Inj" in path.read_bytes() for path in daemon.state.glob("mailboxes/*/*/*"))


def test_a_client_half_closing_right_after_the_final_dot_still_gets_its_250(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=20) as sock:
        reader = into_data(sock)
        sock.sendall(message(subject="half closed") + b".\r\n")
        sock.shutdown(socket.SHUT_WR)
        rest = reader.read()  # until the daemon closes
    assert rest.startswith(b"250 2.0.0 Ok: queued as"), rest
    (delivered,) = daemon.delivered()
    assert delivered["Subject"].endswith("half closed")
    no_traceback(daemon)


def test_a_client_half_closing_in_the_middle_of_data_queues_nothing(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=20) as sock:
        reader = into_data(sock)
        sock.sendall(message(subject="cut short"))
        sock.shutdown(socket.SHUT_WR)
        assert b"250 2.0.0" not in reader.read()
    time.sleep(1)
    assert not daemon.delivered(timeout=0)


@pytest.mark.parametrize("claim", [
    "(c) mx.example.test; dmarc=pass",
    "(a (nested) comment)\r\n\tMX.Example.Test 1; dmarc=pass",
    "\r\n mx.example.test;\r\n dmarc=pass header.from=example.org",
])
def test_authentication_results_claiming_our_authserv_id_behind_comments_is_removed(daemon: Daemon, claim) -> None:
    extra = f"Authentication-Results: {claim}\r\nAuthentication-Results: other.example; dmarc=pass\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"], message(extra=extra))
    (delivered,) = daemon.delivered()
    results = [" ".join(value.split()) for value in delivered.get_all("Authentication-Results")]
    assert not any("dmarc=pass" in value and "example.test" in value.lower() for value in results), results
    assert "other.example; dmarc=pass" in results  # somebody else's claim stays, for what it is worth
