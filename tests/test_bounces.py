"""Bounces of our mail: read from real RFC 3464 reports and plain-text notices, classified,
counted, and noted on the case, and never triaged as customer mail."""

from __future__ import annotations

import smtplib
from email.header import Header
from pathlib import Path

import pytest

from mailpipe.data import shipped
from mailpipe.message import parse
from mailpipe.monitors.bounces import is_bounce, parse_bounce
from mailpipe.outbound.classify import load
from mailpipe.store.sqlite import SQLiteStore
from tests.test_delivery import wait_until
from tests.test_lifecycle import metrics
from tests.test_outbound import (
    CUSTOMER,
    customer_writes,
    delivered_to_owner,
    desk,
    mx,
    owner_reply,
    replies_at_mx,
    submit,
)

__all__ = ["desk", "mx"]  # fixtures shared with the outbound tests
REPORTS = Path(__file__).parent / "fixtures" / "ruby-mail" / "spec" / "fixtures" / "emails" / "multipart_report_emails"


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_a_gmail_report_for_several_recipients_names_each_with_googles_words() -> None:
    bounce = parse_bounce(crlf((REPORTS / "multi_address_bounce1.eml").read_bytes()), "")
    assert bounce.standard and len(bounce.failures) == 5
    first = bounce.failures[0]
    assert (first.recipient, first.action, first.status, first.code) == ("bbbbvhvbbvkjbhfbvbvjhb@gmail.com", "failed",
                                                                         "5.1.1", 550)
    assert first.remote_mta == "gmail-smtp-in.l.google.com"
    assert first.text.startswith("5.1.1 The email account that you tried to reach does not exist")
    assert bounce.original_message_id == "118707422.15521266992174819.JavaMail.root@lvmail01"


def test_a_delay_report_is_a_delayed_failure() -> None:
    (failure,) = parse_bounce(crlf((REPORTS / "report_422.eml").read_bytes()), "").failures
    assert (failure.action, failure.status, failure.code) == ("delayed", "4.2.2", 452)


def test_a_plain_text_failure_notice_is_read_for_recipient_and_reply() -> None:
    notice = (b"From: MAILER-DAEMON@mx.example.org\r\nTo: support@example.test\r\nSubject: failure notice\r\n\r\n"
              b"Hi. This is the qmail-send program at mx.example.org.\r\n"
              b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n\r\n"
              b"<taro@example.org>:\r\n192.0.2.5 does not like recipient.\r\n"
              b"Remote host said: 550 5.1.1 <taro@example.org>: Recipient address rejected: User unknown\r\n"
              b"Giving up on 192.0.2.5.\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n"
              b"Message-ID: <reply-1@example.test>\r\nSubject: Re: [#4] question\r\n")
    bounce = parse_bounce(notice, "")
    assert not bounce.standard
    (failure,) = bounce.failures
    assert (failure.recipient, failure.code, failure.status) == ("taro@example.org", 550, "5.1.1")
    assert bounce.original_message_id == "reply-1@example.test"


def test_an_au_notice_that_quotes_no_smtp_reply_is_read_as_its_own_words() -> None:
    body = ("次のあて先へのメッセージはエラーのため送信できませんでした。\r\n"
            "送信先メールアドレスが見つかりませんでした。\r\nメールアドレスをご確認の上、再送信してください。\r\n\r\n"
            "<taro@ezweb.ne.jp>\r\n\r\n------ Original message ------\r\nMessage-ID: <reply-2@example.test>\r\n")
    subject = Header("メール配信エラー", "iso-2022-jp").encode().encode()
    notice = (b"From: Mail Administrator <Postmaster@ezweb.ne.jp>\r\nTo: support@example.test\r\nSubject: " + subject
              + b"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n\r\n"
              + body.encode("iso-2022-jp") + b"\r\n")
    bounce = parse_bounce(notice, "")
    (failure,) = bounce.failures
    assert (failure.recipient, failure.code) == ("taro@ezweb.ne.jp", 550)
    assert "送信先メールアドレスが見つかりませんでした" in failure.text and "Original message" not in failure.text
    catalog = load(shipped("monitors") / "replies.toml")
    provider = catalog.provider(None, "ezweb.ne.jp")
    assert (provider, catalog.classify(provider, failure.code, failure.text).klass) == ("au", "recipient")
    assert bounce.original_message_id == "reply-2@example.test"


def test_a_notice_padded_with_a_hundred_thousand_blank_lines_is_read_in_one_pass() -> None:
    """Hostile input: the search for the returned copy backtracked over every run of blank lines
    from each line in it (8,000 lines took seconds; this many, a quarter of an hour)."""
    body = "送信できませんでした。\r\n<taro@ezweb.ne.jp>\r\n" + " \r\n" * 100_000
    notice = (b"From: Mail Administrator <Postmaster@ezweb.ne.jp>\r\nTo: support@example.test\r\n"
              b"Subject: Mail delivery failed\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body.encode())
    (failure,) = parse_bounce(notice, "").failures
    assert (failure.recipient, failure.text) == ("taro@ezweb.ne.jp", "送信できませんでした。 <taro@ezweb.ne.jp>")


def test_a_notice_with_a_megabyte_of_letters_before_the_address_is_read_in_one_pass() -> None:
    """Hostile input: the address pattern ran from every letter of a run without "@" to its end
    (80 KB took 4 s; a megabyte, ten minutes)."""
    notice = (b"From: MAILER-DAEMON@mx.example.org\r\nTo: support@example.test\r\nSubject: Undelivered Mail\r\n"
              b"Content-Type: text/plain\r\n\r\nNo such user. " + b"x" * 1_000_000 + b"\r\n<taro@example.jp>\r\n")
    (failure,) = parse_bounce(notice, "").failures
    assert failure.recipient == "taro@example.jp" and failure.text.startswith("No such user.")


@pytest.mark.parametrize(("headers", "mail_from", "expected"), [
    (b"From: customer@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n", "customer@example.org", False),
    (b"From: Mail Delivery System <MAILER-DAEMON@x>\r\nSubject: Undelivered Mail Returned to Sender\r\n", "", True),
    (b"From: postmaster@isp.example.jp\r\nSubject: =?UTF-8?B?6YWN5L+h5LiN6IO9?=\r\n", "", True),
    (b"From: a@x\r\nSubject: hello\r\n", "", False),
    # With an envelope sender: what the raw header block alone cannot rule out goes to the parser.
    (b"From: =?us-ascii?q?MAILER-DAEMON?= <a@x>\r\nSubject: Undeliverable: hi\r\n", "relay@x", True),
    (b"From: Mail Delivery\r\n System <a@x>\r\nSubject: failure notice\r\n", "relay@x", True),
    (b"From: a@x\r\nContent-Type: multipart/report; report-type=delivery-status\r\n", "relay@x", True),
])
def test_only_automatic_mail_that_reads_like_a_bounce_is_one(headers, mail_from, expected) -> None:
    assert is_bounce(headers + b"\r\nbody\r\n", mail_from) is expected


def _bounce_for(message_id: str) -> bytes:
    return (b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\nTo: support@example.test\r\n"
            b"Subject: Delivery Status Notification (Failure)\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
            b"--b\r\nContent-Type: text/plain\r\n\r\nYour message was not delivered.\r\n"
            b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; googlemail.com\r\n\r\n"
            + f"Final-Recipient: rfc822; {CUSTOMER}\r\n".encode()
            + b"Action: failed\r\nStatus: 5.7.26\r\nRemote-MTA: dns; gmail-smtp-in.l.google.com\r\n"
              b"Diagnostic-Code: smtp; 550-5.7.26 This mail has been blocked because the sender is\r\n"
              b" unauthenticated.\r\n\r\n"
              b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            + f"Message-ID: <{message_id}>\r\nSubject: Re: [#1] x\r\n".encode() + b"--b--\r\n")


def test_a_bounce_of_a_reply_is_counted_noted_on_its_case_and_its_owner_told(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id = customer_writes(daemon)
    (original,) = delivered_to_owner(daemon)
    case = int(str(original["X-Mailpipe-Case"]).split()[0])
    owner = str(original["X-Mailpipe-Owner"]).split()[0]
    reply = owner_reply(message_id, case)
    submit(daemon, reply)
    (sent,) = replies_at_mx(mx)
    reply_id = next(line for line in sent.data.decode().splitlines() if line.startswith("Message-ID:")).split("<")[1]
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("", ["support@example.test"], _bounce_for(reply_id.rstrip(">")))
    key = ("mailpipe_bounces_total", (("class", "authentication"), ("provider", "google")))
    wait_until(lambda: metrics(daemon).get(key) == 1)
    def bounce_notes() -> list[str]:  # by content: a random queue id may itself contain "B."
        return [text for text in (p.read_text() for p in daemon.mailbox(owner).glob("new/*")) if "] bounced" in text]

    wait_until(bounce_notes)
    (note,) = bounce_notes()
    assert f"[#{case}] bounced" in note and "5.7.26" in note
    store = SQLiteStore(daemon.state / "store.sqlite")
    (noted,) = store.case_notes(case)
    opened = store.cases()
    store.close()
    assert noted.kind == "bounce" and CUSTOMER in noted.text and "(google, authentication" in noted.text
    assert [c.id for c in opened] == [case]  # the bounce itself opened no case


def test_a_bounce_with_a_never_seen_text_is_counted_as_unknown_and_opens_an_incident(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    submit(daemon, b"From: support@example.test\r\nTo: c0@gmail.test\r\nSubject: hi\r\n\r\nhello\r\n",
           rcpts=("c0@gmail.test",))
    (sent,) = replies_at_mx(mx)  # only a bounce of mail we sent counts (tests/test_hostile_outbound.py)
    bounce = _bounce_for(parse(sent.data).message_id).replace(
        b"550-5.7.26 This mail has been blocked because the sender is\r\n unauthenticated.",
        b"550 5.7.99 A rule Gmail announced this morning")
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("", ["support@example.test"], bounce)
    wait_until(lambda: metrics(daemon).get(("mailpipe_bounces_total", (("class", "unknown"), ("provider", "google"))))
               == 1)
    wait_until(lambda: metrics(daemon).get(("mailpipe_incident_active", (("provider", "google"),))) == 1)
