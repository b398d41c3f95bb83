"""When a new case is acknowledged automatically (RFC 3834), and what the customer reads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mailpipe import config as configuration
from mailpipe import spool as spool_ops
from mailpipe.auth import Verdict
from mailpipe.config import Agent
from mailpipe.data import shipped
from mailpipe.deliver.maildir import MaildirDeliverer
from mailpipe.message import parse
from mailpipe.metrics import Metrics
from mailpipe.outbound.acknowledge import Acknowledgement, acknowledgement, suppression, within
from mailpipe.spool import Entry, Envelope, Message, Spool
from mailpipe.store.sqlite import SQLiteStore
from mailpipe.triage import rules, stages
from mailpipe.triage.work import Work

OWN = ("support@example.test", "yamada@example.test")


def message(extra: str = "", sender: str = "customer@example.org") -> bytes:
    return (f"From: {sender}\r\nTo: support@example.test\r\nSubject: help\r\nMessage-ID: <m1@example.org>\r\n"
            f"{extra}\r\nbody\r\n").encode()


@pytest.mark.parametrize(("extra", "mail_from", "reason"), [
    ("", "", "bounce"),
    ("Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n", "a@example.org", "bounce"),
    ("Auto-Submitted: auto-replied\r\n", "a@example.org", "automatic"),
    ("X-Auto-Response-Suppress: All\r\n", "a@example.org", "automatic"),
    ("Precedence: bulk\r\n", "a@example.org", "list"),
    ("List-Id: <news.example.org>\r\n", "a@example.org", "list"),
    ("List-Unsubscribe: <mailto:u@example.org>\r\n", "a@example.org", "list"),
    ("", "no-reply@example.org", "noreply"),
    ("", "mailer-daemon@example.org", "bounce"),
    ("Auto-Submitted: no\r\n", "customer@example.org", None),
])
def test_automatic_bulk_list_bounce_and_noreply_mail_gets_no_acknowledgement(extra, mail_from, reason) -> None:
    assert suppression(parse(message(extra)), mail_from, OWN) == reason


def test_our_own_addresses_get_no_acknowledgement() -> None:
    assert suppression(parse(message(sender="yamada@example.test")), "yamada@example.test", OWN) == "ours"


def test_response_times_read_naturally_in_both_languages() -> None:
    assert within(3600, "ja") == "1時間以内" and within(86400 * 3, "ja") == "3日以内"
    assert within(1800, "en") == "within 30 minutes" and within(4 * 3600, "en") == "within 4 hours"


def test_the_acknowledgement_names_case_owner_phone_and_threads_under_the_customers_mail() -> None:
    owner = Agent("yamada", "山田 太郎", "y@x", "03-1234-5678")
    raw = acknowledgement(parsed=parse(message()), case_id=42, owner=owner, language="ja",
                          support_address="support@example.test", customer="customer@example.org",
                          response_time=3600, hostname="mx.example.test", queue_id="Q1", now=1_790_000_000)
    ack = parse(raw)
    assert ack.subject == "[#42] お問い合わせを受け付けました"
    assert "受付番号 [#42]" in ack.text and "山田 太郎（03-1234-5678）" in ack.text and "1時間以内" in ack.text
    assert ack.in_reply_to == ("m1@example.org",)
    assert ack.header("auto-submitted") == "auto-replied"


def test_nothing_the_sender_wrote_is_echoed_in_the_acknowledgement() -> None:
    spam = message(sender='"Win a prize at http://spam.example" <victim@third.example>').replace(
        b"Subject: help", b"Subject: Cheap pills at http://spam.example")
    owner = Agent("yamada", "Taro Yamada", "y@x", "03-1234-5678")
    raw = acknowledgement(parsed=parse(spam), case_id=7, owner=owner, language="en",
                          support_address="support@example.test", customer="victim@third.example",
                          response_time=3600, hostname="mx.example.test", queue_id="Q2", now=1_790_000_000)
    ack = parse(raw)
    assert ack.subject == "[#7] We received your message"
    assert "spam.example" not in ack.text and "prize" not in ack.text and b"spam.example" not in raw


@pytest.mark.parametrize(("verdict", "reason"), [
    (Verdict("pass", "customer.example", (), "pass", "reject", "customer.example"), None),
    (Verdict("pass", "customer.example", (), "none", "", "customer.example"), None),  # no DMARC record: SPF aligned
    (Verdict("none", "", (("pass", "mail.customer.example"),), "none", "", "customer.example"), None),
    (Verdict("pass", "attacker.example", (), "none", "", "customer.example"), "unauthenticated"),
    (Verdict("pass", "attacker.example", (("pass", "attacker.example"),), "none", "", "customer.example"),
     "unauthenticated"),
    (Verdict("fail", "customer.example", (("fail", "customer.example"),), "fail", "none", "customer.example"),
     "unauthenticated"),
    (Verdict("temperror", "customer.example", (), "temperror", "", "customer.example"), "unauthenticated"),
])
def test_only_a_sender_whose_from_is_authenticated_and_aligned_is_acknowledged(verdict: Verdict, reason) -> None:
    parsed = parse(message(sender="customer@customer.example"))
    assert suppression(parsed, "someone@attacker.example", OWN, verdict) == reason


def handed_off_again_after(tmp_path: Path, *, sent: bool) -> list[str]:
    """A message whose hand-off runs a second time (``claims`` 2), its acknowledgement already
    queued once and, if ``sent``, sent and gone from the send queue: what the send queue holds."""
    config = configuration.load(None)
    store = SQLiteStore(tmp_path / "store.sqlite")
    outbound = Spool(tmp_path / "outbound.sqlite")
    triage = stages.Triage(rules.load(shipped("rules")), config.agents, config.triage, store, "mx", Metrics(),
                           MaildirDeliverer(tmp_path / "mail"), outbound=outbound)
    envelope = Envelope("customer@example.org", ("support@localhost",), "127.0.0.1", "mx", "inbound")
    entry = Entry("Q1", "active", envelope, time.time(), len(message()), 0, 0, 2, 0.0, "")
    onward = Envelope("", ("customer@example.org",), "127.0.0.1", "mx", "outbound")
    work = Work(Message(entry, message()), recipients=(config.agents[0],),
                acknowledgement=Acknowledgement("Q1-ack", onward, b"Subject: Re: help\r\n\r\nWe have it.\r\n"))
    if sent:
        store.record_sent("<ack1@example.test>", "Q1-ack", time.time())
    try:
        asyncio.run(triage.hand_off(work))
        operator = spool_ops.connect(outbound.path)
        try:
            return [queued.id for queued in spool_ops.entries(operator)]
        finally:
            operator.close()
    finally:
        outbound.close()
        store.close()


def test_a_hand_off_run_again_does_not_send_an_acknowledgement_sent_already(tmp_path: Path) -> None:
    assert handed_off_again_after(tmp_path, sent=True) == []


def test_a_hand_off_run_again_queues_an_acknowledgement_never_sent(tmp_path: Path) -> None:
    assert handed_off_again_after(tmp_path, sent=False) == ["Q1-ack"]
