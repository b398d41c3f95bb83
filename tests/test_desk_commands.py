"""The case commands by mail (note+N@, close+N@, reopen+N@, assign+N+AGENT@) end to end, each answered with a
short note in the case's thread; that customers cannot reach them and malformed ones are
refused is tested with the urgency command (test_urgency_corrections), release+N@ with the
held replies (test_reply_fates)."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from email.header import decode_header, make_header

from tests.conftest import Daemon, mutt_view
from tests.test_delivery import wait_until
from tests.test_urgency_corrections import PASSWORD, cases, customer_writes, delivered_copy, desk

__all__ = ["desk"]  # the fixture, shared with the urgency correction tests


def command(daemon: Daemon, agent: str, to: str, body: str, message_id: str) -> None:
    raw = (f"From: {agent}@example.test\r\nTo: {to}\r\nSubject: phone call\r\nMessage-ID: <{message_id}>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           f"{body}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login(agent, PASSWORD)
        client.sendmail(f"{agent}@example.test", [to], raw)


def confirmations(daemon: Daemon, agent: str) -> list:
    found = [mutt_view(p) for p in sorted((daemon.mailbox(agent) / "new").glob("*"))]
    return [m for m in found if ".desk@" in (m["Message-ID"] or "")]


def test_an_agent_adds_a_call_note_by_mail_and_gets_a_confirmation_in_the_thread(desk) -> None:
    daemon = desk()
    customer_writes(daemon, "請求書について", "請求書を再発行できますか。")
    owner, _ = delivered_copy(daemon)
    command(daemon, owner, "note+1@example.test", "鈴木様から電話。明日までに再発行と約束。", "note1@example.test")
    wait_until(lambda: confirmations(daemon, owner), timeout=30)
    (confirmation,) = confirmations(daemon, owner)
    assert str(make_header(decode_header(confirmation["Subject"]))).startswith("[#1] note+1: ")
    assert confirmation["In-Reply-To"] == "<note1@example.test>"
    assert "Note added to case #1" in confirmation.get_payload(decode=True).decode()
    shown = subprocess.run([sys.executable, "-m", "mailpipe", "cases", "show", "1", "--config",
                            str(daemon.config_path)], capture_output=True, text=True, check=True).stdout
    assert f"call: 鈴木様から電話。明日までに再発行と約束。 ({owner})" in shown


def test_an_agent_closes_and_reopens_a_case_by_mail(desk) -> None:
    daemon = desk()
    customer_writes(daemon, "Question", "How do I export my list?")
    owner, _ = delivered_copy(daemon)
    command(daemon, owner, "close+1@example.test", "Done on the phone.", "close1@example.test")
    wait_until(lambda: cases(daemon)[0]["status"] == "closed", timeout=30)
    command(daemon, owner, "reopen+1@example.test", "They called back.", "reopen1@example.test")
    wait_until(lambda: cases(daemon)[0]["status"] == "open", timeout=30)
    wait_until(lambda: len(confirmations(daemon, owner)) == 2)


def test_an_agent_reassigns_a_case_and_its_customer_by_mail(desk) -> None:
    daemon = desk()
    customer_writes(daemon, "Question", "How do I export my list?")
    owner, _ = delivered_copy(daemon)
    other = "smith" if owner == "yamada" else "yamada"
    command(daemon, owner, f"assign+1+{other}@example.test", "You know this customer.", "assign1@example.test")
    wait_until(lambda: cases(daemon)[0]["owner"] == other, timeout=30)
    (confirmation,) = confirmations(daemon, owner)
    assert f"Case #1 now belongs to {other}" in confirmation.get_payload(decode=True).decode()
    shown = subprocess.run([sys.executable, "-m", "mailpipe", "cases", "show", "1", "--config",
                            str(daemon.config_path)], capture_output=True, text=True, check=True).stdout
    assert f"owner      {other}: reassigned by {owner}" in shown
    customer_writes(daemon, "Re: Question", "One more thing.")  # the customer's next mail follows the case
    wait_until(lambda: any(b"One more thing" in p.read_bytes() for p in (daemon.mailbox(other) / "new").glob("*")))


def test_assigning_to_nobody_on_the_roster_says_who_there_is(desk) -> None:
    daemon = desk()
    customer_writes(daemon, "Question", "How do I export my list?")
    owner, _ = delivered_copy(daemon)
    command(daemon, owner, "assign+1+nobody@example.test", "", "assign2@example.test")
    wait_until(lambda: confirmations(daemon, owner), timeout=30)
    assert "No agent or tier 'nobody'" in confirmations(daemon, owner)[0].get_payload(decode=True).decode()
    assert cases(daemon)[0]["owner"] == owner
