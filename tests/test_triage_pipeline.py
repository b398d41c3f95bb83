"""Triage end to end: a customer's mail through the daemon into the owner's Maildir, pre-triaged."""

from __future__ import annotations

import base64
import email
import json
import smtplib
import subprocess
import sys
import time
from email.header import decode_header, make_header

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import TRAINING_SECONDS, Daemon, merge, mutt_view

TECH = {"id": "sato", "name": "佐藤 次郎", "address": "sato@example.test", "phone": "03-9999-0000", "tier": "tech",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "hours": "00:00-24:00"}
ALWAYS = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "hours": "00:00-24:00"}
ROSTER = {"agents": [
    {"id": "yamada", "name": "山田 太郎", "address": "yamada@example.test", "phone": "03-1234-5678", **ALWAYS},
    {"id": "smith", "name": "Alex Smith", "address": "smith@example.test", "phone": "03-1234-5679", **ALWAYS},
    TECH]}


def send(daemon: Daemon, subject: str, body: str, sender: str = "customer@example.org", extra: str = "",
         message_id: str | None = None) -> str:
    message_id = message_id or f"{time.monotonic_ns()}@example.org"
    encoded = make_header([(subject, "utf-8")]).encode(linesep="\r\n")
    raw = (f"From: Customer <{sender}>\r\nTo: support@example.test\r\nSubject: {encoded}\r\n"
           f"Message-ID: <{message_id}>\r\n{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail(sender, ["support@example.test"], raw)
    return message_id


def text(value: str | None) -> str:
    return str(make_header(decode_header(value or "")))


def mailbox(daemon: Daemon, agent: str, expect: int = 1, cards: bool = False) -> list[email.message.Message]:
    """One agent's Maildir, waiting until at least ``expect`` messages are there."""
    deadline = time.monotonic() + 10
    while True:
        found = _files(daemon, agent, cards)
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _files(daemon: Daemon, agent: str, cards: bool) -> list[email.message.Message]:
    paths = sorted(daemon.mailbox(agent).glob("new/*")) + sorted(daemon.mailbox(agent).glob("cur/*"))
    messages = [mutt_view(p) for p in paths]
    return [m for m in messages if ("triage@" in (m["Message-ID"] or "")) == cards]


def test_a_critical_mail_arrives_tagged_with_case_urgency_rules_owner_and_customer(make_daemon, with_model) -> None:
    daemon = make_daemon(merge(ROSTER, with_model))
    send(daemon, "【緊急】全ユーザーのメールが届きません",
         "本日から全ユーザーのメールがGmailに届いていません。550-5.7.26 です。")
    owner_copy, escalated_copy = daemon.delivered(expect=2)  # the owner's, and the tech tier's
    assert escalated_copy["X-Mailpipe-Case"] == owner_copy["X-Mailpipe-Case"]
    delivered = owner_copy
    assert text(delivered["Subject"]) == "[URGENT][#1] 【緊急】全ユーザーのメールが届きません"
    assert delivered["X-Mailpipe-Case"] == "1 (new)"
    assert delivered["X-Mailpipe-Urgency"].startswith("critical ")
    assert "MASS_DELIVERY_FAILURE(3)" in text(delivered["X-Mailpipe-Rules"])
    assert "MODEL_CRITICAL(16)" in text(delivered["X-Mailpipe-Rules"])
    assert text(delivered["X-Mailpipe-Owner"]).split()[0] in ("yamada", "smith")
    assert text(delivered["X-Mailpipe-Customer"]).startswith("customer@example.org")
    assert text(delivered["X-Mailpipe-Escalation"]) == "tech: sato"


def test_an_escalated_case_also_reaches_the_tier_it_escalates_to(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    send(daemon, "Our account was hacked", "Someone logged into our account and sent spam.")
    (copy,) = mailbox(daemon, "sato")
    assert copy["X-Mailpipe-Case"] == "1 (new)"
    assert len(daemon.delivered(expect=2)) == 2


def test_the_triage_card_is_threaded_under_the_original_and_shows_the_history(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    first = send(daemon, "CSVのインポート方法", "CSVで取り込む方法を教えてください。")
    daemon.delivered()
    second = send(daemon, "請求書について", "請求書を再発行できますか。")
    cards = daemon.delivered(expect=2, cards=True)
    assert [c["In-Reply-To"] for c in cards] == [f"<{first}>", f"<{second}>"]
    latest = cards[1].get_payload(decode=True).decode()
    assert "Case #2 (new)" in latest
    assert "#1" in latest and "CSVのインポート方法" in latest
    assert cards[1]["Auto-Submitted"] == "auto-generated"


def test_a_reply_with_the_case_token_joins_the_case_and_its_owner(make_daemon, with_model) -> None:
    daemon = make_daemon(merge(ROSTER, with_model))
    send(daemon, "ログインできません", "ログインできません。")
    (first,) = daemon.delivered()
    send(daemon, "Re: [#1] ログインできません", "まだログインできません。何度も連絡しています。")
    second = daemon.delivered(expect=2)[1]
    assert second["X-Mailpipe-Case"] == "1"
    assert text(second["X-Mailpipe-Owner"]) == text(first["X-Mailpipe-Owner"])
    assert text(second["Subject"]) == "[HIGH] Re: [#1] ログインできません"


def test_a_reply_by_in_reply_to_joins_the_case(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    original = send(daemon, "Question", "How do I import contacts?")
    daemon.delivered()
    send(daemon, "Re: Question", "And custom fields?", extra=f"In-Reply-To: <{original}>\r\n")
    assert daemon.delivered(expect=2)[1]["X-Mailpipe-Case"] == "1"


def test_a_case_token_of_another_customer_does_not_join_their_case(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    send(daemon, "Question", "How do I import contacts?", sender="alice@example.org")
    daemon.delivered()
    send(daemon, "Re: [#1] Question", "I guess case numbers", sender="mallory@example.net")
    assert {m["X-Mailpipe-Case"] for m in daemon.delivered(expect=2)} == {"1 (new)", "2 (new)"}


def test_new_customers_are_spread_over_the_least_loaded_agents(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    for n in range(4):
        send(daemon, f"Question {n}", "How do I add a user?", sender=f"c{n}@example.org")
        daemon.delivered(expect=n + 1)
    owners = [text(m["X-Mailpipe-Owner"]).split()[0] for m in daemon.delivered(expect=4)]
    assert sorted(owners) == ["smith", "smith", "yamada", "yamada"]


def test_when_the_owner_is_away_a_teammate_receives_the_mail_and_the_owner_stays(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    send(daemon, "Question", "How do I add a user?")
    (first,) = daemon.delivered()
    owner = text(first["X-Mailpipe-Owner"]).split()[0]
    teammate = "smith" if owner == "yamada" else "yamada"
    result = subprocess.run([sys.executable, "-m", "mailpipe", "agents", "away", owner, "--config",
                             str(daemon.config_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    send(daemon, "Another question", "Can I export reports?")
    (covered,) = mailbox(daemon, teammate)
    assert text(covered["X-Mailpipe-Owner"]).split()[0] == owner


def test_customers_import_then_show_lists_the_profile_and_cases(make_daemon, tmp_path) -> None:
    daemon = make_daemon(ROSTER)
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text("address,name,company,plan,vip,phone\ncustomer@example.org,佐藤 花子,株式会社サンプル,"
                        "enterprise,yes,03-0000-0000\n", encoding="utf-8")
    cli = [sys.executable, "-m", "mailpipe", "customers"]
    imported = subprocess.run([*cli, "import", str(csv_file), "--config", str(daemon.config_path)],
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    send(daemon, "ログインできません", "ログインできません。")
    (delivered,) = daemon.delivered()
    assert "VIP_CUSTOMER(3)" in text(delivered["X-Mailpipe-Rules"])
    assert "company=株式会社サンプル" in text(delivered["X-Mailpipe-Customer"])
    shown = subprocess.run([*cli, "show", "Customer@Example.org", "--config", str(daemon.config_path)],
                           capture_output=True, text=True)
    assert "佐藤 花子" in shown.stdout and "#1" in shown.stdout and "ログインできません" in shown.stdout


def test_agents_list_shows_duty_and_open_cases(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    send(daemon, "Question", "How do I add a user?")
    daemon.delivered()
    result = subprocess.run([sys.executable, "-m", "mailpipe", "agents", "list", "--json", "--config",
                             str(daemon.config_path)], capture_output=True, text=True)
    rows = {row["id"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows["sato"]["tier"] == "tech" and rows["sato"]["on_duty"] is True
    assert sum(row["open_cases"] for row in rows.values()) == 1


def _signed(subject: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    message = (f"From: Customer <customer@example.org>\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
               "Message-ID: <signed@example.org>\r\n\r\nPlease check my account.\r\n").encode()
    signature = dkim.sign(message, b"sel", b"example.org", pem, include_headers=[b"from", b"to", b"subject"])
    return signature + message, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def _deliver_signed(daemon: Daemon, signed: bytes) -> bytes:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"], signed)
    daemon.delivered()
    (path,) = [p for p in daemon.state.glob("mailboxes/*/new/*") if b"triage@" not in p.read_bytes()]
    return path.read_bytes()


def test_the_original_body_is_untouched_but_for_lf_line_ends_so_the_senders_dkim_signature_verifies(
        make_daemon) -> None:
    daemon = make_daemon({**ROSTER, "triage": {"subject_tags": False}})
    signed, record = _signed("Account question")
    delivered = _deliver_signed(daemon, signed)
    assert b"\r" not in delivered
    assert delivered.endswith(signed.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n"))
    assert dkim.verify(delivered, dnsfunc=lambda name, timeout=5: record)
    assert dkim.verify(delivered.replace(b"\n", b"\r\n"), dnsfunc=lambda name, timeout=5: record)


def test_subject_tags_alter_a_signed_header_so_the_signature_no_longer_verifies(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    signed, record = _signed("Account question")
    delivered = _deliver_signed(daemon, signed)
    assert b"Please check my account.\n" in delivered
    assert not dkim.verify(delivered, dnsfunc=lambda name, timeout=5: record)


def test_cases_show_tells_a_cases_story_from_the_cli(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    send(daemon, "Question", "How do I add a user?")
    daemon.delivered()
    cli = [sys.executable, "-m", "mailpipe", "cases", "show", "1", "--config", str(daemon.config_path)]
    shown = subprocess.run(cli, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "Case #1: open" in shown.stdout and "Question" in shown.stdout
    assert "new customer; least loaded" in shown.stdout
    story = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True).stdout)
    assert [m["direction"] for m in story["messages"]] == ["in"]
    assert story["assignments"][0]["role"] == "owner" and story["notes"] == []
    missing = subprocess.run([*cli[:5], "99", *cli[6:]], capture_output=True, text=True)
    assert missing.returncode == 1 and "#99: not found" in missing.stderr


def test_cases_list_and_close_from_the_cli(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    send(daemon, "Question", "How do I add a user?")
    daemon.delivered()
    cli = [sys.executable, "-m", "mailpipe", "cases"]
    listed = subprocess.run([*cli, "list", "--open", "--json", "--config", str(daemon.config_path)],
                            capture_output=True, text=True)
    (case,) = map(json.loads, listed.stdout.splitlines())
    assert (case["id"], case["status"], case["subject"]) == (1, "open", "Question")
    closed = subprocess.run([*cli, "close", "1", "--config", str(daemon.config_path)], capture_output=True, text=True)
    assert closed.returncode == 0
    again = subprocess.run([*cli, "list", "--open", "--config", str(daemon.config_path)], capture_output=True,
                           text=True)
    assert "#1 " not in again.stdout


def test_the_owner_header_keeps_id_and_phone_ascii_and_encodes_the_name_as_a_word_of_its_own(make_daemon) -> None:
    daemon = make_daemon({"agents": [ROSTER["agents"][0]]})
    send(daemon, "Question", "How do I add a user?")
    (delivered,) = daemon.delivered()
    raw = delivered["X-Mailpipe-Owner"]
    assert raw.startswith("yamada 03-1234-5678 =?utf-8?")
    assert text(raw) == "yamada 03-1234-5678 山田 太郎"


def test_a_followups_subject_keeps_its_re_and_gains_only_the_tag(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    original = send(daemon, "Question", "How do I import contacts?")
    daemon.delivered()
    send(daemon, "Re: Question", "And custom fields?", extra=f"In-Reply-To: <{original}>\r\n")
    assert text(daemon.delivered(expect=2)[1]["Subject"]) == "[#1] Re: Question"


def test_an_out_of_office_reply_is_filed_closed_and_counts_in_nobodys_load(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    send(daemon, "Automatic reply: your ticket", "I am out of the office until Monday.",
         extra="Auto-Submitted: auto-replied\r\n")
    (card,) = daemon.delivered(cards=True)
    assert "Filed closed" in card.get_payload(decode=True).decode()
    listing = subprocess.run([sys.executable, "-m", "mailpipe", "cases", "list", "--open", "--json", "--config",
                              str(daemon.config_path)], capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert listing.returncode == 0 and listing.stdout.strip() == ""
