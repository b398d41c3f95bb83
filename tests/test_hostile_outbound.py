"""Hostile input in the outbound path, replayed over real SMTP: who a reply may claim to be from,
whom an acknowledgement may go to and what it may say, and which bounces may count."""

from __future__ import annotations

import smtplib
import time

import dkim
import pytest

from mailpipe.message import parse
from mailpipe.store.sqlite import SQLiteStore
from tests.test_bounces import _bounce_for
from tests.test_delivery import wait_until
from tests.test_hostile_input import no_traceback
from tests.test_lifecycle import metrics
from tests.test_outbound import (
    CUSTOMER,
    PASSWORD,
    customer_writes,
    delivered_to_owner,
    desk,
    dns_txt,
    mx,
    owner_reply,
    replies_at_mx,
    submit,
)

__all__ = ["desk", "mx"]  # fixtures shared with the outbound tests


def submitted(daemon, head: str, *, sender: str = "yamada@example.test") -> tuple[int, bytes]:
    """DATA's reply to a message with this header block, sent logged in as yamada."""
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login("yamada", PASSWORD)
        client.mail(sender)
        client.rcpt(CUSTOMER)
        return client.data(f"{head}Subject: x\r\n\r\nbody\r\n".encode())


@pytest.mark.parametrize("head", [
    "From: =?us-ascii?q?yamada=40example.test_=28?= <smith@example.test> =?us-ascii?q?=29?=\r\n",
    "From: =?utf-8?q?yamada=40example=2Etest?= <smith@example.test>\r\n",
    "From: yamada@example.test\r\nSender: smith@example.test\r\n",
    "From: yamada@example.test\r\nReply-To: =?us-ascii?q?support=40example.test?= <ceo@example.test>\r\n",
    "From: yamada@example.test, smith@example.test\r\n",
    "From: undisclosed-recipients:;\r\n",
])
def test_an_agent_cannot_send_as_another_address_hidden_in_encoded_words_sender_or_reply_to(desk, head) -> None:
    daemon = desk()
    code, text = submitted(daemon, head)
    assert code == 553 and b"not an address you may send as" in text, text
    no_traceback(daemon)


def test_an_encoded_display_name_on_the_agents_own_address_is_accepted_and_signed_for_it(desk, mx,
                                                                                      dns_server) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    head = ("From: =?utf-8?b?5bGx55SwIOWkqumDjg==?= <yamada@example.test>\r\n"
            "Reply-To: support@example.test\r\nTo: customer@customer.test\r\n")
    code, _ = submitted(daemon, head)
    assert code == 250
    (sent,) = replies_at_mx(mx)
    assert parse(sent.data).sender == "yamada@example.test"
    assert dkim.verify(sent.data, dnsfunc=dns_txt(dns_server))


SPAM = ('From: "Win a prize at http://spam.example" <victim@customer.test>\r\nTo: support@example.test\r\n'
        "Subject: Cheap pills at http://spam.example\r\nMessage-ID: <spam-{n}@attacker.example>\r\n\r\n"
        "Visit http://spam.example now\r\n")


def test_mail_whose_from_is_not_authenticated_gets_no_acknowledgement(desk, mx) -> None:
    daemon = desk()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:  # attacker.example has no SPF: From unproven
        for n in range(3):
            client.sendmail("attacker@attacker.example", ["support@example.test"], SPAM.format(n=n).encode())
    delivered_to_owner(daemon, 1)  # the first opened a case (the others join it): still triaged
    wait_until(lambda: metrics(daemon).get(("mailpipe_autoreplies_total", (("result", "unauthenticated"),)), 0) >= 1)
    time.sleep(1.5)
    assert not mx.received


def test_an_authenticated_customer_is_acknowledged_without_an_echo_of_their_name_or_subject(desk, mx) -> None:
    daemon = desk()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:  # customer.test's SPF passes from loopback
        client.sendmail(CUSTOMER, ["support@example.test"], SPAM.format(n=9).encode())
    (ack,) = mx.wait()
    assert ack.rcpt_tos == ("victim@customer.test",)
    assert b"spam.example" not in ack.data and b"prize" not in ack.data.lower()
    assert "We received your message" in parse(ack.data).subject or "受け付けました" in parse(ack.data).subject


def forge_bounces(daemon, message_id: str, count: int = 3) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        for _ in range(count):
            client.sendmail("", ["support@example.test"], _bounce_for(message_id))


def test_forged_bounces_of_mail_we_never_sent_open_no_incident_and_touch_no_case(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}, "monitors": {"incident_threshold": 2}})
    customer_writes(daemon)
    (original,) = delivered_to_owner(daemon)
    case = int(str(original["X-Mailpipe-Case"]).split()[0])
    incoming_id = str(original["Message-ID"]).strip("<>")  # the customer's own message: not ours either
    forge_bounces(daemon, "forged-1@example.test")
    forge_bounces(daemon, incoming_id)
    wait_until(lambda: metrics(daemon).get(("mailpipe_bounces_unmatched_total", ())) == 6)
    counted = metrics(daemon)
    assert not any(name == "mailpipe_bounces_total" and value for (name, _), value in counted.items())
    assert not counted.get(("mailpipe_incident_active", (("provider", "google"),)))
    store = SQLiteStore(daemon.state / "store.sqlite")
    notes = store.case_notes(case)
    store.close()
    assert not notes
    assert len(daemon.delivered(timeout=0)) == 1  # no bounce reached an agent either
    no_traceback(daemon)


def test_a_bounce_of_our_acknowledgement_is_counted(desk, mx) -> None:
    daemon = desk()
    customer_writes(daemon)
    (ack,) = mx.wait()
    ack_id = parse(ack.data).message_id
    forge_bounces(daemon, ack_id, 1)
    key = ("mailpipe_bounces_total", (("class", "authentication"), ("provider", "google")))
    wait_until(lambda: metrics(daemon).get(key) == 1)
    assert not metrics(daemon).get(("mailpipe_bounces_unmatched_total", ()))


def test_a_bounce_of_a_reply_we_sent_still_counts_after_forged_ones(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id = customer_writes(daemon)
    (original,) = delivered_to_owner(daemon)
    submit(daemon, owner_reply(message_id, int(str(original["X-Mailpipe-Case"]).split()[0])))
    (sent,) = replies_at_mx(mx)
    forge_bounces(daemon, "forged-2@example.test", 2)
    forge_bounces(daemon, parse(sent.data).message_id, 1)
    wait_until(lambda: metrics(daemon).get(("mailpipe_bounces_total", (("class", "authentication"),
                                                                       ("provider", "google")))) == 1)
    assert metrics(daemon).get(("mailpipe_bounces_unmatched_total", ())) == 2


def test_a_control_character_in_a_stored_customer_name_reaches_neither_header_nor_card(make_daemon) -> None:
    daemon = make_daemon(start=False)
    daemon.state.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(daemon.state / "store.sqlite")  # as an import before refusals existed left it
    store.upsert_customer("customer@example.org", name="Carol\x00X-Evil: 1\x1b[2J", company="Acme\x07")
    store.close()
    daemon.start()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"],
                        b"From: customer@example.org\r\nTo: support@example.test\r\nSubject: hi\r\n\r\nhello\r\n")
    (delivered,) = daemon.delivered()
    line = str(delivered["X-Mailpipe-Customer"])
    assert "name=Carol X-Evil: 1 [2J" in line and "company=Acme" in line
    (card,) = daemon.delivered(cards=True)
    for raw in (delivered.as_bytes(), card.as_bytes(), card.get_payload(decode=True)):
        assert b"\x00" not in raw and b"\x1b" not in raw and b"\x07" not in raw
