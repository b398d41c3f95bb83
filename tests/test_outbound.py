"""The outbound path end to end, with real peers on loopback: a customer writes in, the owner
replies through submission with AUTH, and the recipient domain's MX — found through unbound
serving the test zones — receives the reply stamped, clean and DKIM-signed."""

from __future__ import annotations

import asyncio
import collections
import email
import email.message
import email.utils
import json
import re
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from email import policy
from email.header import Header, decode_header, make_header
from pathlib import Path
from typing import Any

import dkim
import pytest
import trustme

from mailpipe.message import charsets, parse
from mailpipe.outbound import send
from tests.conftest import Daemon
from tests.dns_peer import ED25519_SEED, Unbound, dkim_private_key, zones_for_tests
from tests.mx_peer import Delivery, RecordingMX
from tests.test_delivery import queue_list, wait_until
from tests.test_lifecycle import metrics

PASSWORD = "correct horse battery staple"
FOOTER_START = "このメールについてお電話でのお問い合わせは、担当 "
CUSTOMER = "customer@customer.test"


@pytest.fixture
def mx(tmp_path: Path):
    server = RecordingMX(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def desk(make_daemon, mx: RecordingMX, tmp_path: Path):
    """A daemon that signs for example.test and sends to the test MX; agents have passwords."""

    def start(overrides: dict[str, Any] | None = None, *, name: str = "d") -> Daemon:
        rsa_key, ed_key = tmp_path / f"{name}-sel.key", tmp_path / f"{name}-ed.key"
        rsa_key.write_bytes(dkim_private_key())
        ed_key.write_text(ED25519_SEED)
        settings = {
            "outbound": {"remote_port": mx.port, "retry_initial": "1s", "retry_max": "2s", "ca_file": str(mx.ca_file)},
            "dkim": [{"domain": "example.test", "selector": "sel", "key_file": str(rsa_key)},
                     {"domain": "example.test", "selector": "ed", "key_file": str(ed_key),
                      "algorithm": "ed25519-sha256"}],
        }
        daemon = make_daemon(_merge(settings, overrides or {}), start=False, name=name)
        daemon.give_passwords(PASSWORD)
        return daemon.start()

    return start


def notices(mailbox: Path, suffix: str) -> list[Path]:
    """The notices in ``mailbox`` derived from a spooled message: its queue id (16 characters, and
    ``-N`` for one recipient's copy) plus ``suffix``. A glob such as ``*D*`` would also match a
    queue id that happens to contain a D."""
    name = re.compile(rf"M[0-9A-Z]{{16}}(?:-\d+)?{suffix}\d*")
    return [path for path in mailbox.glob("new/*") if name.fullmatch(path.name.split(".")[1])]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def customer_writes(daemon: Daemon, subject: str = "メールが届きません", extra: str = "") -> str:
    message_id = f"{time.monotonic_ns()}@customer.test"
    raw = (f"From: Customer <{CUSTOMER}>\r\nTo: support@example.test\r\nSubject: "
           f"{Header(subject, 'utf-8').encode(linesep=chr(13) + chr(10))}\r\nMessage-ID: <{message_id}>\r\n{extra}"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           "全ユーザーのメールがGmailに届きません。\r\n").encode()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail(CUSTOMER, ["support@example.test"], raw)
    return message_id


def delivered_to_owner(daemon: Daemon, count: int = 1) -> list[email.message.Message]:
    found = daemon.delivered(expect=count)
    assert len(found) >= count, daemon.log()
    return found


def owner_reply(in_reply_to: str, case: int, *, sender: str = "support@example.test", name: str = "山田 太郎",
                to: str = CUSTOMER, text: str = "①ご不便をおかけしております。確認いたします。") -> bytes:
    """What a Japanese mail client sends: ISO-2022-JP text and HTML alternatives, an encoded
    subject still carrying triage's tags."""
    message = email.message.EmailMessage(policy=policy.SMTP)
    message["From"] = f"{Header(name, 'iso-2022-jp').encode()} <{sender}>"
    message["To"] = to
    message["Subject"] = Header(f"Re: [URGENT][#{case}] メールが届きません", "iso-2022-jp").encode()
    message["In-Reply-To"] = f"<{in_reply_to}>"
    message["References"] = f"<{in_reply_to}>"
    message["Message-ID"] = f"<reply-{time.monotonic_ns()}@example.test>"
    message["Date"] = email.utils.formatdate(localtime=True)
    message["X-Mailpipe-Case"] = "leaked internal header"
    message.set_content(_jis(text + "\n\n山田\n"), maintype="text", subtype="plain", cte="7bit",
                        params={"charset": "ISO-2022-JP"})
    message.add_alternative(_jis(f"<html><body><p>{text}</p></body></html>\n"), maintype="text", subtype="html",
                            cte="7bit", params={"charset": "ISO-2022-JP"})
    return message.as_bytes()


def _jis(text: str) -> bytes:
    """ISO-2022-JP as CP50220: ① (NEC row 13) encoded through Shift_JIS, which Python's strict
    codec refuses."""
    out = b""
    for char in text:
        try:
            out += char.encode("iso2022_jp")
        except UnicodeEncodeError:
            sjis = char.encode("cp932")
            j1, j2 = _sjis_to_jis(sjis[0], sjis[1])
            out += b"\x1b$B" + bytes((j1, j2)) + b"\x1b(B"
    return out


def _sjis_to_jis(s1: int, s2: int) -> tuple[int, int]:
    row = (s1 - 0x70 if s1 < 0xA0 else s1 - 0xB0) * 2
    if s2 < 0x9F:
        return row - 1, s2 - 0x1F - (1 if s2 >= 0x80 else 0)
    return row, s2 - 0x7E


def submit(daemon: Daemon, raw: bytes, *, user: str = "yamada", sender: str = "support@example.test",
           rcpts: tuple[str, ...] = (CUSTOMER,)) -> str:
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login(user, PASSWORD)
        client.sendmail(sender, list(rcpts), raw)
        return client.noop()[1].decode()


def replies_at_mx(mx: RecordingMX, count: int = 1) -> list[Delivery]:
    """What the MX got, without the automatic acknowledgements of new cases."""
    deadline = time.monotonic() + 20
    while True:
        found = [d for d in mx.received if b"Auto-Submitted: auto-replied" not in d.data]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def dns_txt(unbound):
    resolver = unbound.resolver()

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return b"".join(b"".join(r.strings) for r in resolver.resolve(name.decode().rstrip("."), "TXT"))

    return lookup


def texts(raw: bytes) -> list[tuple[str, str, str]]:
    parts = [p for p in email.message_from_bytes(raw).walk() if not p.is_multipart()]
    return [(p.get_content_type(), p.get_content_charset(),
             charsets.decode(p.get_payload(decode=True), charsets.normalise(p.get_content_charset()))) for p in parts]


def case_of(message: email.message.Message) -> int:
    return int(str(message["X-Mailpipe-Case"]).split()[0])


def start_case(daemon: Daemon) -> tuple[str, int]:
    message_id = customer_writes(daemon)
    (original,) = delivered_to_owner(daemon)
    return message_id, case_of(original)


def test_the_owners_reply_reaches_the_customers_mx_stamped_once_clean_and_signed(desk, mx, dns_server) -> None:
    daemon = desk()
    message_id, case = start_case(daemon)
    submit(daemon, owner_reply(message_id, case))
    (reply,) = replies_at_mx(mx)
    assert reply.rcpt_tos == (CUSTOMER,) and reply.mail_from == "support@example.test"
    assert reply.tls
    plain, html = texts(reply.data)
    assert plain[1] == html[1] == "iso-2022-jp"
    for _, _, text in (plain, html):
        assert text.count(FOOTER_START) == 1
        assert "（03-1234-5678）" in text or "（03-1234-5679）" in text
        assert text.startswith("①ご不便") or "<p>①ご不便" in text
    assert html[2].index(FOOTER_START) < html[2].index("</body>")
    assert b"x-mailpipe" not in reply.data.lower()
    assert parse(reply.data).subject == f"Re: [#{case}] メールが届きません"
    lookup = dns_txt(dns_server)
    signed = dkim.DKIM(reply.data)
    assert signed.verify(idx=0, dnsfunc=lookup) and signed.verify(idx=1, dnsfunc=lookup)


def test_a_reply_outside_any_case_gets_the_footer_in_the_language_of_its_text(desk, mx) -> None:
    daemon = desk()
    head, body = owner_reply("unknown@customer.test", 0).split(b"\r\n\r\n", 1)
    fields = [f for f in head.split(b"\r\n") if not f.startswith((b"In-Reply-To", b"References", b"Subject"))]
    submit(daemon, b"\r\n".join([*fields, b"Subject: hello", b"", body]))
    (reply,) = replies_at_mx(mx)
    for _, _, text in texts(reply.data):
        assert text.count(FOOTER_START) == 1


def test_the_reply_marks_the_case_answered_with_its_first_response_time(desk, mx) -> None:
    daemon = desk()
    message_id, case = start_case(daemon)
    submit(daemon, owner_reply(message_id, case))
    replies_at_mx(mx)
    cases = subprocess.run([sys.executable, "-m", "mailpipe", "cases", "list", "--json", "--config",
                            str(daemon.config_path)], capture_output=True, text=True, check=True).stdout
    (record,) = [json.loads(line) for line in cases.splitlines()]
    assert record["status"] == "answered"
    assert record["first_response_at"] >= record["opened_at"]
    assert metrics(daemon)[("mailpipe_case_first_response_seconds_count", (("level", record["level"]),))] == 1


def test_the_customer_gets_an_acknowledgement_naming_the_case_owner_and_phone(desk, mx, dns_server) -> None:
    daemon = desk()
    customer_writes(daemon)
    (original,) = delivered_to_owner(daemon)
    case, level = case_of(original), original["X-Mailpipe-Urgency"].split()[0]
    (ack,) = mx.wait()
    assert ack.mail_from == "<>" and ack.rcpt_tos == (CUSTOMER,)
    parsed = parse(ack.data)
    assert parsed.subject.startswith(f"[#{case}] お問い合わせを受け付けました")
    promised = {"critical": "1時間以内", "high": "4時間以内", "normal": "1日以内", "low": "3日以内"}[level]
    assert promised in parsed.text and ("03-1234-5678" in parsed.text or "03-1234-5679" in parsed.text)
    assert parsed.header("auto-submitted") == "auto-replied"
    assert dkim.verify(ack.data, dnsfunc=dns_txt(dns_server))


def test_no_second_acknowledgement_within_the_window_and_none_to_automatic_mail(desk, mx) -> None:
    daemon = desk()
    start_case(daemon)
    mx.wait(1)
    subprocess.run([sys.executable, "-m", "mailpipe", "cases", "close", "1", "--config", str(daemon.config_path)],
                   check=True, capture_output=True)
    customer_writes(daemon, "別件です")  # a new case, within the window
    customer_writes(daemon, "Out of office", extra="Auto-Submitted: auto-replied\r\n")
    delivered_to_owner(daemon, 3)
    time.sleep(1.5)
    assert len(mx.received) == 1
    counted = metrics(daemon)
    assert counted[("mailpipe_autoreplies_total", (("result", "recent"),))] == 1


def test_submission_refuses_mail_before_authentication(desk) -> None:
    daemon = desk()
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.ehlo()
        code, text = client.mail("support@example.test")
    assert code == 530 and b"5.7.0 Authentication required" in text


def auth_plain(daemon: Daemon, user: str, password: str, source: str = "127.0.0.1") -> int:
    """One AUTH PLAIN (smtplib's login() would try LOGIN too after a failure), from ``source``
    (any 127/8 address: a client on another address is another client to the lockout)."""
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, source_address=(source, 0)) as client:
        client.ehlo()
        client.user, client.password = user, password
        try:
            return client.auth("PLAIN", client.auth_plain)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


def test_a_wrong_password_is_refused_and_repeated_failures_lock_the_login_out(desk) -> None:
    daemon = desk({"submission": {"max_auth_failures": 3}})
    assert [auth_plain(daemon, "yamada", "wrong password!") for _ in range(3)] == [535, 535, 535]
    assert auth_plain(daemon, "yamada", PASSWORD) == 454
    assert auth_plain(daemon, "smith", PASSWORD) == 454  # the client address is locked out too


def test_one_wrong_password_through_smtplibs_login_counts_once_toward_the_lockout(desk) -> None:
    daemon = desk({"submission": {"max_auth_failures": 2}})
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("yamada", "wrong password!")  # tries PLAIN, then LOGIN
    assert auth_plain(daemon, "yamada", PASSWORD) == 235
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client, pytest.raises(smtplib.SMTPAuthenticationError):
        client.login("yamada", "wrong password!")
    assert auth_plain(daemon, "yamada", "another wrong one") == 535
    assert auth_plain(daemon, "yamada", PASSWORD) == 454


def test_the_lockout_counts_an_agent_once_whatever_login_it_is_given_as(desk) -> None:
    daemon = desk({"submission": {"max_auth_failures": 3}})
    logins = ("yamada", "yamada@example.test", " YAMADA@Example.Test")
    assert [auth_plain(daemon, login, "wrong password!", source=f"127.0.0.{2 + n}")
            for n, login in enumerate(logins)] == [535, 535, 535]
    for n, login in enumerate(logins):  # every client address is fresh: only the agent is locked
        assert auth_plain(daemon, login, PASSWORD, source=f"127.0.0.{10 + n}") == 454
    assert auth_plain(daemon, "smith", PASSWORD, source="127.0.0.20") == 235


def rss_peak(pid: int) -> int:
    """The process's peak resident memory so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_login_flood_waits_on_its_own_bounded_pool_and_triage_goes_on(desk) -> None:
    """30 clients on 30 addresses try passwords nonstop: hashing (scrypt, 128 MiB each) runs on
    one thread with a short queue, the rest are told 454 at once, memory stays bounded, and a
    customer's mail is triaged and delivered while the flood is still going on."""
    daemon = desk({"submission": {"max_auth_failures": 100000}})
    assert daemon.process is not None
    stop, codes = threading.Event(), collections.Counter()

    def attacker(n: int) -> None:
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                codes[auth_plain(daemon, f"guess{n}-{attempt}", "hunter2", source=f"127.0.1.{n + 1}")] += 1
            except (OSError, smtplib.SMTPException):
                codes["error"] += 1

    flood = [threading.Thread(target=attacker, args=(n,), daemon=True) for n in range(30)]
    for thread in flood:
        thread.start()
    try:
        wait_until(lambda: codes[454] >= 30, timeout=60)  # the pool is full and refusing
        customer_writes(daemon, subject="during the flood")
        (delivered,) = daemon.delivered(timeout=60)  # triaged while the flood goes on
        assert not stop.is_set() and all(thread.is_alive() for thread in flood)
    finally:
        stop.set()
        for thread in flood:
            thread.join(30)
    assert "during the flood" in str(make_header(decode_header(delivered["Subject"])))
    assert codes[535] >= 1 and codes[454] >= 30 and codes[235] == 0
    counted = metrics(daemon)
    assert counted[("mailpipe_submission_auth_total", (("result", "busy"),))] >= 30
    assert rss_peak(daemon.process.pid) < 450 * 1024 * 1024  # one 128 MiB hash at a time, not one per thread


def test_an_agent_may_not_send_as_another_address(desk) -> None:
    daemon = desk()
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login("yamada", PASSWORD)
        code, text = client.mail("smith@example.test")
        assert code == 553 and b"not owned by user yamada" in text
        client.rset()
        client.mail("yamada@example.test")
        client.rcpt(CUSTOMER)
        code, text = client.data(b"From: ceo@example.test\r\nSubject: x\r\n\r\nbody\r\n")
    assert code == 553 and b"ceo@example.test" in text


def test_without_plaintext_on_loopback_auth_needs_starttls(desk, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "submission.pem"))
    pem = str(tmp_path / "submission.pem")
    daemon = desk({"submission": {"plaintext_auth_on_loopback": False, "tls_certificate": pem, "tls_key": pem}})
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        code, _ = client.docmd("AUTH", "PLAIN AHlhbWFkYQB4")
        assert code == 538
        client.starttls(context=context)
        client.ehlo()
        client.login("yamada", PASSWORD)


def test_a_4xx_from_the_mx_is_retried_until_accepted(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, case = start_case(daemon)
    mx.refuse("RCPT", "451 4.3.0 Temporary local problem", times=2)
    submit(daemon, owner_reply(message_id, case))
    assert len(replies_at_mx(mx)) == 1
    assert mx.answers == ["451 4.3.0 Temporary local problem"] * 2
    assert queue_list(daemon) == []


def test_a_5xx_from_the_mx_gives_the_sending_agent_a_delivery_status_notification(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, case = start_case(daemon)
    mx.refuse_always("RCPT", "550 5.1.1 The email account that you tried to reach does not exist")
    submit(daemon, owner_reply(message_id, case, sender="smith@example.test", name="Alex Smith"), user="smith",
           sender="smith@example.test")
    wait_until(lambda: notices(daemon.mailbox("smith"), "D0"))
    (path,) = notices(daemon.mailbox("smith"), "D0")
    report = email.message_from_bytes(path.read_bytes())
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = report.get_payload()[1].as_string()
    assert f"Final-Recipient: rfc822; {CUSTOMER}" in status and "Status: 5.1.1" in status
    assert "Remote-MTA: dns; mx.customer.test" in status
    assert queue_list(daemon) == []


def test_a_refusal_is_logged_and_counted_as_a_refusal_once_never_as_delivered(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    mx.refuse_always("RCPT", "550 5.1.2 Bad destination mailbox address")
    submit(daemon, f"From: support@example.test\r\nTo: {CUSTOMER}\r\nSubject: hi\r\n\r\nhello\r\n".encode())
    key = ("mailpipe_handoffs_total", (("queue", "outbound"), ("result", "refused")))
    wait_until(lambda: metrics(daemon).get(key) == 1)
    assert metrics(daemon).get(("mailpipe_handoffs_total", (("queue", "outbound"), ("result", "delivered")))) in (
        None, 0)
    outbound = [line for line in daemon.log().splitlines() if f"to={CUSTOMER}" in line]
    assert sum("event=refused" in line for line in outbound) == 1, outbound
    assert not any("event=delivered" in line for line in outbound), outbound


def test_each_deferral_is_logged_once_with_its_provider_and_delay(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    mx.refuse("RCPT", "451 4.3.0 Temporary local problem", times=1)
    submit(daemon, f"From: support@example.test\r\nTo: {CUSTOMER}\r\nSubject: hi\r\n\r\nhello\r\n".encode())
    assert len(replies_at_mx(mx)) == 1
    deferred = [line for line in daemon.log().splitlines() if "event=deferred" in line and "4.3.0" in line]
    assert len(deferred) == 1, deferred
    assert "provider=" in deferred[0] and "delay=" in deferred[0]


def test_a_login_logs_no_library_deprecation_warning(desk) -> None:
    daemon = desk()
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login("yamada", PASSWORD)
    wait_until(lambda: "event=authenticated" in daemon.log())
    assert "deprecated" not in daemon.log()


def test_mail_to_a_null_mx_domain_is_refused_at_once(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    submit(daemon, b"From: support@example.test\r\nTo: someone@nullmx.test\r\nSubject: hi\r\n\r\nhello\r\n",
           rcpts=("someone@nullmx.test",))
    wait_until(lambda: notices(daemon.mailbox("yamada"), "D0"))
    assert "Status: 5.1.10" in notices(daemon.mailbox("yamada"), "D0")[0].read_text()


def test_a_domain_without_mx_is_reached_at_its_own_address(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    submit(daemon, b"From: support@example.test\r\nTo: a@fallback.test\r\nSubject: hi\r\n\r\nhello\r\n",
           rcpts=("a@fallback.test",))
    (delivery,) = replies_at_mx(mx)
    assert delivery.rcpt_tos == ("a@fallback.test",)


def test_replies_are_counted_by_provider_and_class_and_unknown_texts_logged(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    mx.refuse("RCPT", "550 5.7.26 This mail has been blocked because the sender is unauthenticated.")
    mx.refuse("RCPT", "421 4.7.0 [TSS99] Something Yahoo never said before")
    submit(daemon, b"From: support@example.test\r\nTo: a@gmail.test\r\nSubject: hi\r\n\r\nhello\r\n",
           rcpts=("a@gmail.test",))
    submit(daemon, b"From: support@example.test\r\nTo: b@yahoo.test\r\nSubject: hi\r\n\r\nhello\r\n",
           rcpts=("b@yahoo.test",))
    replies_at_mx(mx, 1)
    wait_until(lambda: metrics(daemon).get(
        ("mailpipe_outbound_replies_total", (("class", "accepted"), ("provider", "yahoo")))) == 1)
    counted = metrics(daemon)
    assert counted[("mailpipe_outbound_replies_total", (("class", "authentication"), ("provider", "google")))] == 1
    assert counted[("mailpipe_outbound_replies_total", (("class", "unknown"), ("provider", "yahoo")))] == 1
    assert "unknown reply from a known provider" in daemon.log()
    assert "[TSS99] Something Yahoo never said" in daemon.log()


def test_tls_required_for_a_domain_is_verified_and_refused_without_a_trusted_certificate(desk, mx,
                                                                                       tmp_path: Path) -> None:
    daemon = desk({"outbound": {"autoreply": False, "tls_required_domains": ["customer.test"]}})
    submit(daemon, b"From: support@example.test\r\nTo: customer@customer.test\r\nSubject: hi\r\n\r\nhello\r\n")
    (delivery,) = replies_at_mx(mx)
    assert delivery.tls
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "unrelated-ca.pem"))
    untrusting = desk({"outbound": {"autoreply": False, "tls_required_domains": ["customer.test"],
                                    "ca_file": str(tmp_path / "unrelated-ca.pem")}}, name="untrusting")
    submit(untrusting, b"From: support@example.test\r\nTo: customer@customer.test\r\nSubject: hi\r\n\r\nhello\r\n")
    wait_until(lambda: any(e["state"] == "deferred" for e in queue_list(untrusting)))
    (entry,) = queue_list(untrusting)
    assert "4.7.5 TLS with mx.customer.test failed" in entry["reason"]
    assert len(mx.received) == 1


def test_a_second_reply_by_another_agent_is_held_and_its_author_told_until_released(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, case = start_case(daemon)
    submit(daemon, owner_reply(message_id, case))
    replies_at_mx(mx)
    submit(daemon, owner_reply(message_id, case, sender="smith@example.test", name="Alex Smith"), user="smith",
           sender="smith@example.test")
    wait_until(lambda: any(e["state"] == "hold" for e in queue_list(daemon)))
    (held,) = queue_list(daemon)
    assert "double reply: yamada already answered" in held["reason"]
    wait_until(lambda: notices(daemon.mailbox("smith"), "H"))
    subprocess.run([sys.executable, "-m", "mailpipe", "queue", "release", held["id"], "--config",
                    str(daemon.config_path)], check=True, capture_output=True)
    assert len(replies_at_mx(mx, 2)) == 2


def test_a_crash_between_queue_and_send_loses_nothing_and_sends_nothing_twice(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    mx.refuse_always("RCPT", "451 4.7.0 try again later")
    ids = []
    for n in range(10):
        raw = (f"From: support@example.test\r\nTo: {CUSTOMER}\r\nSubject: reply {n}\r\n"
               f"Message-ID: <crash-{n}@example.test>\r\n\r\nbody {n}\r\n").encode()
        submit(daemon, raw)
        ids.append(f"crash-{n}@example.test")
    wait_until(lambda: sum(e["state"] == "deferred" for e in queue_list(daemon)) == 10)
    daemon.kill()
    mx.always.clear()
    daemon.start()
    replies_at_mx(mx, 10)
    time.sleep(1)
    assert sorted(parse(d.data).message_id for d in mx.received) == sorted(ids)


def test_no_more_than_max_per_destination_conversations_run_at_once_per_domain(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False, "max_per_destination": 2}})
    mx.holding = True
    for n in range(6):
        submit(daemon, f"From: support@example.test\r\nTo: {CUSTOMER}\r\nSubject: {n}\r\n\r\nbody\r\n".encode())
    wait_until(lambda: mx.in_data == 2)
    time.sleep(1)  # a third conversation, if the limit let one through, would be in DATA by now
    assert mx.in_data == 2
    mx.holding = False
    replies_at_mx(mx, 6)
    assert mx.most_in_data == 2


def test_mail_deferred_past_its_lifetime_gives_the_agent_a_notification(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False, "max_lifetime": "2s"}})
    mx.refuse_always("RCPT", "450 4.2.1 The user you are trying to contact is receiving mail too quickly")
    submit(daemon, f"From: support@example.test\r\nTo: {CUSTOMER}\r\nSubject: late\r\n\r\nbody\r\n".encode())
    wait_until(lambda: notices(daemon.mailbox("yamada"), "D"), timeout=20)
    report = notices(daemon.mailbox("yamada"), "D")[0].read_bytes().decode()
    assert "expired from the queue" in report and "Status: 4.2.1" in report
    wait_until(lambda: queue_list(daemon) == [])


class _AuthenticatingRelay:
    """A smarthost: AUTH required, only after STARTTLS."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bool]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append((session.auth_data.login.decode(), session.ssl is not None))
        return "250 2.0.0 Ok"


def test_a_smarthost_gets_everything_over_verified_tls_with_auth(desk, tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from tests.conftest import free_port

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "relay-ca.pem"))
    relay, port = _AuthenticatingRelay(), free_port()

    def check(server, session, envelope, mechanism, data) -> AuthResult:
        return AuthResult(success=(data.login, data.password) == (b"mailpipe", b"relay secret"), auth_data=data)

    controller = Controller(relay, hostname="127.0.0.1", port=port, tls_context=context, auth_required=True,
                            auth_require_tls=True, authenticator=check)
    controller.start()
    try:
        daemon = desk({"outbound": {"autoreply": False, "smarthost": "127.0.0.1", "smarthost_port": port,
                                    "smarthost_username": "mailpipe", "smarthost_password": "relay secret",
                                    "ca_file": str(tmp_path / "relay-ca.pem")}})
        submit(daemon, b"From: support@example.test\r\nTo: a@gmail.com\r\nSubject: hi\r\n\r\nhello\r\n",
               rcpts=("a@gmail.com",))
        wait_until(lambda: relay.received)
    finally:
        controller.stop()
    assert relay.received == [("mailpipe", True)]
    # The provider behind a smarthost is known from the recipient's domain.
    wait_until(lambda: metrics(daemon)[("mailpipe_outbound_replies_total",
                                        (("class", "accepted"), ("provider", "google")))] == 1)


def test_an_unreachable_provider_is_a_connection_failure_not_an_unknown_reply(desk) -> None:
    from tests.conftest import free_port

    daemon = desk({"outbound": {"autoreply": False, "remote_port": free_port()}})
    submit(daemon, b"From: support@example.test\r\nTo: a@gmail.test\r\nSubject: hi\r\n\r\nhello\r\n",
           rcpts=("a@gmail.test",))
    failures = ("mailpipe_outbound_connection_failures_total", (("provider", "google"),))
    wait_until(lambda: metrics(daemon).get(failures, 0) >= 1)
    counted = metrics(daemon)
    assert counted[("mailpipe_outbound_replies_total", (("class", "unknown"), ("provider", "google")))] == 0
    assert counted[("mailpipe_outbound_replies_total", (("class", "other"), ("provider", "google")))] >= 1
    assert "unknown reply from a known provider" not in daemon.log()


def test_the_senders_resolver_keeps_an_mx_answer_for_its_ttl() -> None:
    server = Unbound(zones_for_tests())
    resolving = send.resolver([("127.0.0.1", server.port)], lifetime=2.0)

    async def mx() -> list[str]:
        return [r.to_text() for r in await resolving.resolve("customer.test", "MX")]

    first = asyncio.run(mx())
    server.stop()
    assert asyncio.run(mx()) == first == ["10 mx.customer.test."]


def reply_to_non_ascii_address(daemon: Daemon) -> None:
    message_id, case = start_case(daemon)
    raw = owner_reply(message_id, case, to="山田@customer.test")
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login("yamada", PASSWORD)
        client.sendmail("support@example.test", ["山田@customer.test"], raw, mail_options=["SMTPUTF8"])


def test_a_reply_to_a_non_ascii_address_goes_out_with_smtputf8(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    reply_to_non_ascii_address(daemon)
    (delivery,) = replies_at_mx(mx)
    assert delivery.rcpt_tos == ("山田@customer.test",)


def test_a_reply_to_a_non_ascii_address_the_mx_cannot_take_gives_the_agent_a_notification(desk, mx) -> None:
    mx.offer_smtputf8(False)
    daemon = desk({"outbound": {"autoreply": False}})
    reply_to_non_ascii_address(daemon)
    wait_until(lambda: notices(daemon.mailbox("yamada"), "D0"))
    (path,) = notices(daemon.mailbox("yamada"), "D0")
    status = email.message_from_bytes(path.read_bytes()).get_payload()[1].as_string()
    assert "Status: 5.6.7" in status
    assert queue_list(daemon) == []


def test_a_reply_that_attaches_the_triage_card_is_held_and_its_author_told(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, case = start_case(daemon)
    (card,) = [p.read_bytes() for p in (daemon.mailbox("yamada") / "new").glob("*") if b".triage@" in p.read_bytes()]
    reply = email.message_from_bytes(owner_reply(message_id, case), policy=policy.SMTP)
    reply.add_attachment(email.message_from_bytes(card, policy=policy.SMTP))
    submit(daemon, reply.as_bytes())
    wait_until(lambda: any(e["state"] == "hold" for e in queue_list(daemon)))
    (held,) = queue_list(daemon)
    assert "attaches the triage card" in held["reason"]
    wait_until(lambda: notices(daemon.mailbox("yamada"), "H"))
    assert [d for d in mx.received if b"Auto-Submitted: auto-replied" not in d.data] == []
