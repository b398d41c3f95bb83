"""Urgency corrections end to end: an agent's word by mail (urgency+LEVEL@ on the submission port),
refused from anybody else, the lead's ``mailpipe learn``, ``rules eval``, and the model the
daemon trains at start, keeps through a broken reload, and trains again after a correction."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mailpipe.triage import corpus
from tests.conftest import TRAINING_SECONDS, Daemon, merge
from tests.test_delivery import wait_until

PASSWORD = "correct horse battery staple"


@pytest.fixture
def desk(make_daemon, with_model: dict):
    """A daemon running the urgency model, whose agents have submission passwords."""

    def start(overrides: dict | None = None) -> Daemon:
        settings = merge(merge(with_model, {"outbound": {"autoreply": False}}), overrides or {})
        daemon = make_daemon(settings, start=False)
        daemon.give_passwords(PASSWORD)
        return daemon.start()

    return start


def customer_writes(daemon: Daemon, subject: str, body: str) -> None:
    raw = (f"From: customer@example.org\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
           "Message-ID: <c1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"], raw)


def metric(daemon: Daemon, name: str) -> float:
    text = urllib.request.urlopen(daemon.metrics_url + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def redirect(daemon: Daemon, delivered: bytes, to: str, user: str = "yamada") -> None:
    """What a mail client's "redirect" (bounce, resend) does: the message as it is, to a new address,
    its Maildir file's LF line ends sent as CRLF (RFC 5321)."""
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login(user, PASSWORD)
        client.sendmail(f"{user}@example.test", [to], delivered.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def delivered_copy(daemon: Daemon) -> tuple[str, bytes]:
    daemon.delivered()
    for path in sorted((daemon.mailbox("yamada") / "new").glob("*")) + sorted(
            (daemon.mailbox("smith") / "new").glob("*")):
        data = path.read_bytes()
        if b"X-Mailpipe-Case:" in data:
            return path.parent.parent.name, data
    raise AssertionError("no delivered copy")


def cases(daemon: Daemon) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "mailpipe", "cases", "list", "--json", "--config",
                             str(daemon.config_path)], capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_an_agent_corrects_a_case_by_mail_and_the_model_learns_it(desk, training_corpus: Path) -> None:
    daemon = desk()
    examples_at_start = metric(daemon, "mailpipe_urgency_model_examples")
    assert examples_at_start == len(corpus.load([training_corpus]))
    customer_writes(daemon, "Question about exports", "How do I export my subscriber list as CSV?")
    owner, copy = delivered_copy(daemon)
    redirect(daemon, copy, "urgency+critical@example.test", user=owner)
    wait_until(lambda: cases(daemon)[0]["level"] == "critical", timeout=30)
    wait_until(lambda: metric(daemon, 'mailpipe_triage_corrections_total{from="normal",to="critical"}') == 1)
    wait_until(lambda: metric(daemon, "mailpipe_urgency_model_examples") == examples_at_start + 1,
               timeout=TRAINING_SECONDS)
    notes = [data for data in (p.read_bytes() for p in (daemon.mailbox(owner) / "new").glob("*"))
             if b".desk@" in data]
    assert len(notes) == 1 and b"[URGENT][#1]" in notes[0] and b"normal \xe2\x86\x92 critical" in notes[0]


def test_the_daemon_reads_mail_with_the_model_in_a_process_of_its_own(desk) -> None:
    daemon = desk()
    wait_until(lambda: metric(daemon, "mailpipe_urgency_reader_up") == 1, timeout=TRAINING_SECONDS)
    customer_writes(daemon, "Everything is gone", "All 12,400 subscribers vanished from our list overnight.")
    delivered_copy(daemon)
    assert metric(daemon, 'mailpipe_urgency_reads_total{process="model"}') == 1
    assert metric(daemon, 'mailpipe_urgency_reads_total{process="daemon"}') == 0
    assert metric(daemon, "mailpipe_urgency_reader_starts_total") == 1


def test_a_forward_with_the_case_token_in_its_subject_finds_the_case(desk) -> None:
    daemon = desk()
    customer_writes(daemon, "Thanks", "Thanks for yesterday, all good now. No reply needed.")
    owner, _ = delivered_copy(daemon)
    forward = (f"From: {owner}@example.test\r\nTo: urgency+high@example.test\r\nSubject: Fwd: [#1] Thanks\r\n"
               "Message-ID: <fwd1@example.test>\r\n\r\nThis one is not thanks, read it again.\r\n").encode()
    redirect(daemon, forward, "urgency+high@example.test", user=owner)
    wait_until(lambda: cases(daemon)[0]["level"] == "high", timeout=30)


def test_a_customer_cannot_reach_a_desk_command(desk) -> None:
    daemon = desk()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.mail("attacker@example.org")
        for command in ("urgency+critical", "note+1", "close+1", "reopen+1", "release+1"):
            code, text = client.rcpt(f"{command}@example.test")
            assert code == 550 and b"5.1.1" in text, command


def test_a_malformed_command_is_refused_at_rcpt_with_its_usage(desk) -> None:
    daemon = desk()
    malformed = {"urgency+urgent": b"critical, high, normal, low", "close+abc": b"N is the case number",
                 "note+99999999999999999999": b"N is the case number"}
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login("yamada", PASSWORD)
        client.mail("yamada@example.test")
        for address, usage in malformed.items():
            code, text = client.rcpt(f"{address}@example.test")
            assert code == 550 and usage in text, address


def test_a_desk_command_does_not_ride_along_with_a_reply(desk) -> None:
    daemon = desk()
    with smtplib.SMTP("127.0.0.1", daemon.submission_port) as client:
        client.login("yamada", PASSWORD)
        client.mail("yamada@example.test")
        assert client.rcpt("customer@example.org")[0] == 250
        code, text = client.rcpt("urgency+high@example.test")
    assert code == 550 and b"of their own" in text


def test_a_reload_with_a_broken_corpus_keeps_the_running_model(desk, tmp_path: Path) -> None:
    daemon = desk()
    before = metric(daemon, "mailpipe_urgency_model_examples")
    broken = tmp_path / "corpus.d"
    broken.mkdir()
    (broken / "desk.toml").write_text('[[mail]]\nlevel = "urgent"\nsubject = "x"\nbody = "y"\n')
    daemon.settings["triage"]["corpus_overrides"] = str(broken)
    daemon.write_config()
    daemon.signal(1)
    wait_until(lambda: metric(daemon, 'mailpipe_config_reloads_total{result="failure"}') == 1, timeout=TRAINING_SECONDS)
    assert "desk.toml: mail #1: level 'urgent'" in daemon.log()
    assert metric(daemon, "mailpipe_urgency_model_examples") == before
    customer_writes(daemon, "サービス停止", "全ユーザーが管理画面にアクセスできません。")
    assert daemon.delivered()[0]["X-Mailpipe-Urgency"].startswith("critical")


def test_the_lead_corrects_a_case_from_the_shell(desk) -> None:
    daemon = desk()
    customer_writes(daemon, "Question about exports", "How do I export my subscriber list as CSV?")
    daemon.delivered()
    result = subprocess.run([sys.executable, "-m", "mailpipe", "learn", "--level", "high", "1", "--config",
                             str(daemon.config_path)], capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 0, result.stderr
    assert "case #1: normal -> high" in result.stdout
    assert cases(daemon)[0]["level"] == "high"


def test_saved_messages_are_taught_into_the_desks_corpus(tmp_path: Path) -> None:
    saved = tmp_path / "saved.eml"
    saved.write_bytes("X-Mailpipe-Case: 3 (new)\r\nSubject: [URGENT][#3] 配信停止\r\n\r\n"
                      "全件止まっています\r\n".encode())
    corpus_dir = tmp_path / "corpus.d"
    config = tmp_path / "mailpipe.toml"
    config.write_text(f'state_directory = "{tmp_path / "state"}"\n[triage]\ncorpus_overrides = "{corpus_dir}"\n')
    result = subprocess.run([sys.executable, "-m", "mailpipe", "learn", "--level", "critical", str(saved),
                             "--config", str(config)], capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 0, result.stderr
    taught = (corpus_dir / "learned.toml").read_text()
    assert 'subject = "配信停止"' in taught and 'level = "critical"' in taught


def test_rules_eval_reports_rules_model_and_both_on_labelled_mail(tmp_path: Path, training_corpus_keys: str) -> None:
    labelled = tmp_path / "mine.toml"
    labelled.write_text('[[mail]]\nlevel = "critical"\nsubject = "全件エラー"\n'
                        'body = "全ユーザーのメールが届きません"\n[[mail]]\nlevel = "low"\nsubject = "お礼"\n'
                        'body = "ありがとうございました。返信は不要です。"\n')
    config = tmp_path / "mailpipe.toml"
    config.write_text("[triage]\n" + training_corpus_keys)
    result = subprocess.run([sys.executable, "-m", "mailpipe", "rules", "eval", str(labelled), "--json",
                             "--config", str(config)], capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"rules", "model", "both"}
    assert report["both"]["messages"] == 2 and report["both"]["confusion"]["critical"]["low"] == 0
    assert set(report["both"]["levels"]["critical"]) == {"precision", "recall", "count"}
