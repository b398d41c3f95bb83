"""The daemon's life cycle: systemd notifications, reload, graceful stop, health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mailpipe import config as configuration
from mailpipe import daemon as running
from mailpipe.data import shipped
from mailpipe.monitors.runner import Monitors
from mailpipe.triage.learning import Learner
from tests.conftest import TRAINING_SECONDS, Daemon, merge, toml
from tests.peers import listening


def send(daemon: Daemon, rcpt: str = "support@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", [rcpt], b"Subject: x\r\n\r\nbody\r\n")


def metrics_once_ready(daemon: Daemon, key: tuple[str, tuple[tuple[str, str], ...]], at_least: float,
                       timeout: float = 15.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics, once ``key`` reaches ``at_least`` (spool and case gauges are refreshed every
    couple of seconds, not at each event)."""
    deadline = time.monotonic() + timeout
    while True:
        found = metrics(daemon)
        if found.get(key, 0) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def metrics(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(daemon.metrics_url + "/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_ready_is_notified_once_listening_and_stopping_on_sigterm(daemon: Daemon) -> None:
    assert "READY=1" in daemon.notifications
    send(daemon)
    assert daemon.stop() == 0
    daemon.wait_for("STOPPING=1", timeout=2)


def test_the_watchdog_is_fed_at_half_the_interval_systemd_asks_for(make_daemon) -> None:
    daemon = make_daemon(start=False)
    daemon.start(env={"WATCHDOG_USEC": "400000"})
    started = time.monotonic()
    daemon.wait_for("WATCHDOG=1", timeout=5)
    daemon.wait_for("WATCHDOG=1", timeout=5)
    assert time.monotonic() - started < 2


def test_sighup_applies_a_valid_new_config(daemon: Daemon) -> None:
    settings = merge(daemon.settings, {"inbound": {"addresses": ["support@example.test", "sales@example.test"]}})
    daemon.write_config(settings)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("RELOADING=1")
    daemon.wait_for("READY=1")
    send(daemon, "sales@example.test")
    assert metrics(daemon)[("mailpipe_config_reloads_total", (("result", "success"),))] == 1


def test_two_sighups_20_ms_apart_leave_the_newest_file_running(daemon: Daemon) -> None:
    def write_atomically(address: str) -> None:
        settings = merge(daemon.settings, {"inbound": {"addresses": ["support@example.test", address]}})
        staged = daemon.config_path.with_suffix(".new")
        staged.write_text(toml(settings), "utf-8")
        os.replace(staged, daemon.config_path)

    for trial in range(3):
        write_atomically(f"older{trial}@example.test")
        daemon.signal(signal.SIGHUP)
        time.sleep(0.02)
        write_atomically(f"newer{trial}@example.test")
        daemon.signal(signal.SIGHUP)
        for _ in range(2):  # drained as they come, or the daemon's sd_notify blocks on a full socket
            daemon.wait_for("READY=1", timeout=TRAINING_SECONDS)
        key = ("mailpipe_config_reloads_total", (("result", "success"),))
        assert metrics_once_ready(daemon, key, 2 * (trial + 1), timeout=30)[key] == 2 * (trial + 1)
        with smtplib.SMTP("127.0.0.1", daemon.port) as client:
            client.ehlo()
            client.mail("customer@example.org")
            assert client.rcpt(f"newer{trial}@example.test")[0] == 250
            assert client.rcpt(f"older{trial}@example.test")[0] == 550
    reloading = [n for n in daemon.read_notifications() if n in ("RELOADING=1", "READY=1")]
    assert reloading[1:] == ["RELOADING=1", "READY=1"] * 6  # one at a time: never two RELOADING in a row


def test_sighup_with_a_broken_config_keeps_the_running_one(daemon: Daemon) -> None:
    daemon.config_path.write_text('[inbound]\naddresses = "not a list"\n')
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("RELOADING=1")
    daemon.wait_for("READY=1")
    send(daemon)
    assert metrics(daemon)[("mailpipe_config_reloads_total", (("result", "failure"),))] == 1
    assert "reload refused, keeping the running config" in daemon.log()
    assert "inbound.addresses" in daemon.log()
    assert len(daemon.delivered()) == 1


def test_sigterm_lets_a_transaction_in_data_finish_then_exits_0(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in (b"EHLO c\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<support@example.test>\r\n",
                     b"DATA\r\n"):
            sock.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
        assert reply.startswith(b"354")
        sock.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for("STOPPING=1")
        with socket.socket() as late:
            assert late.connect_ex(("127.0.0.1", daemon.port)) != 0
        sock.sendall(b"second half\r\n.\r\n")
        assert reader.readline().startswith(b"250 2.0.0 Ok: queued as")
        assert reader.readline().startswith(b"421 4.3.2")
    assert daemon.process.wait(20) == 0
    daemon.start()
    (delivered,) = daemon.delivered()
    assert delivered["Subject"] == "[#1] in flight"


def test_healthz_reports_ok(daemon: Daemon) -> None:
    response = urllib.request.urlopen(daemon.metrics_url + "/healthz", timeout=5)
    assert response.status == 200
    assert json.loads(response.read()) == {"status": "ok", "problems": {}}


def test_unknown_http_paths_get_404(daemon: Daemon) -> None:
    try:
        urllib.request.urlopen(daemon.metrics_url + "/nope", timeout=5)
    except urllib.error.HTTPError as error:
        assert error.code == 404
    else:
        raise AssertionError("expected 404")


def test_metrics_count_connections_messages_replies_and_spool_depth(daemon: Daemon) -> None:
    send(daemon)
    daemon.delivered()
    found = metrics_once_ready(daemon, ("mailpipe_spool_operations_total", (("queue", "inbound"),)), 3)
    assert found[("mailpipe_smtp_connections_total", (("listener", "inbound"), ("result", "accepted")))] == 1
    assert found[("mailpipe_smtp_messages_total", (("listener", "inbound"), ("result", "queued")))] == 1
    assert found[("mailpipe_smtp_replies_total", (("code", "250"), ("listener", "inbound")))] >= 3
    assert found[("mailpipe_handoffs_total", (("queue", "inbound"), ("result", "delivered")))] == 1
    assert found[("mailpipe_handoff_seconds_count", (("queue", "inbound"),))] == 1
    assert found[("mailpipe_smtp_accept_seconds_count", (("listener", "inbound"),))] == 1
    assert found[("mailpipe_spool_messages", (("queue", "inbound"), ("state", "incoming")))] == 0
    assert ("mailpipe_spool_oldest_message_age_seconds", (("queue", "inbound"), ("state", "deferred"))) in found
    assert found[("mailpipe_spool_operations_total", (("queue", "inbound"),))] >= 3


def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(daemon: Daemon, make_daemon) -> None:
    other = make_daemon({"state_directory": daemon.settings["state_directory"]}, start=False, name="other")
    other.write_config()
    result = subprocess.run([sys.executable, "-m", "mailpipe", "serve", "--config", str(other.config_path)],
                            capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 1
    assert "another mailpipe daemon holds" in result.stderr


def test_a_broken_config_at_start_exits_1_naming_the_key(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"max_connections": "many"}}, start=False)
    daemon.write_config()
    result = subprocess.run([sys.executable, "-m", "mailpipe", "serve", "--config", str(daemon.config_path)],
                            capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 1
    assert "inbound.max_connections" in result.stderr


def test_a_corpus_missing_a_level_stops_the_start_before_anything_listens(make_daemon, tmp_path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "desk.toml").write_text("".join(
        f'[[mail]]\nlevel = "{level}"\nsubject = "s{n}"\nbody = "b{n}"\n\n'
        for n, level in enumerate(["critical", "high", "normal"] * 2)))
    daemon = make_daemon({"triage": {"model": True, "corpus_directory": str(corpus)}}, start=False)
    daemon.write_config()
    result = subprocess.run([sys.executable, "-m", "mailpipe", "serve", "--config", str(daemon.config_path)],
                            capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 1
    assert "fewer than two examples at level 'low'" in result.stderr
    checked = subprocess.run([sys.executable, "-m", "mailpipe", "check-config", str(daemon.config_path)],
                             capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert checked.returncode != 0 and "fewer than two examples at level 'low'" in checked.stderr


def test_sighup_with_a_broken_rule_file_keeps_the_running_rules(make_daemon, tmp_path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(shipped("rules"), rules)
    daemon = make_daemon({"triage": {"rules_directory": str(rules), "rules_overrides": ""}})
    (rules / "urgency.toml").write_text('[[rule]]\nname = "BROKEN"\nscore = "a lot"\n', "utf-8")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("RELOADING=1")
    daemon.wait_for("READY=1")
    assert metrics(daemon)[("mailpipe_config_reloads_total", (("result", "failure"),))] == 1
    assert "rule BROKEN" in daemon.log()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("customer@example.org", ["support@example.test"], b"Subject: refund please\r\n\r\nrefund\r\n")
    (delivered,) = daemon.delivered()
    assert "CANCEL_REFUND" in delivered["X-Mailpipe-Rules"]


def test_triage_metrics_count_cases_assignments_and_stage_latency(daemon: Daemon) -> None:
    send(daemon)
    daemon.delivered()
    found = metrics_once_ready(daemon, ("mailpipe_cases_open", (("level", "normal"),)), 1)
    assert found[("mailpipe_cases_opened_total", (("level", "normal"),))] == 1
    assert found[("mailpipe_cases_open", (("level", "normal"),))] == 1
    assert found[("mailpipe_assignments_total", (("reason", "least_loaded"), ("tier", "support")))] == 1
    assert found[("mailpipe_stage_seconds_count", (("queue", "inbound"), ("stage", "score")))] == 1
    assert ("mailpipe_case_oldest_open_age_seconds", (("level", "normal"),)) in found


def test_mail_is_accepted_while_the_urgency_model_is_fitted_and_triaged_once_it_is(make_daemon, monkeypatch) -> None:
    # In process, so that the test decides when fitting ends, not the machine's speed.
    stopped = make_daemon({"triage": {"model": True}}, start=False)
    stopped.write_config()

    async def scenario() -> None:
        fitted = asyncio.Event()

        async def fit(self: Learner, found: object) -> None:
            await fitted.wait()

        monkeypatch.setattr(Learner, "fit", fit)
        serving = running.Daemon(configuration.load(stopped.config_path), stopped.config_path)
        task = asyncio.create_task(serving.run())
        await asyncio.to_thread(listening, stopped.port, TRAINING_SECONDS, "mailpipe")
        await asyncio.to_thread(send, stopped)  # answered 250 (smtplib raises otherwise)
        assert await asyncio.to_thread(stopped.delivered, 1) == []  # spooled, waiting for the model
        fitted.set()
        assert len(await asyncio.to_thread(stopped.delivered, 30)) == 1
        serving.stop()
        assert await task == 0

    asyncio.run(scenario())


def test_a_part_of_the_daemon_that_raises_is_logged_counted_and_started_again(make_daemon, monkeypatch,
                                                                              caplog) -> None:
    # In process: nothing a peer can send makes a part raise, so the fault is put in by hand.
    async def scenario() -> None:
        runs: list[int] = []
        again = asyncio.Event()

        async def failing_once(self: Monitors) -> None:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("a bug in a monitor")
            again.set()
            await asyncio.Event().wait()

        monkeypatch.setattr(Monitors, "run", failing_once)
        stopped = make_daemon(start=False)
        stopped.write_config()
        serving = running.Daemon(configuration.load(stopped.config_path), stopped.config_path)
        task = asyncio.create_task(serving.run())
        await asyncio.wait_for(again.wait(), TRAINING_SECONDS)
        await asyncio.to_thread(send, stopped)
        assert len(await asyncio.to_thread(stopped.delivered, 30)) == 1
        found = await asyncio.to_thread(metrics, stopped)
        assert found[("mailpipe_part_restarts_total", (("part", "monitors"),))] == 1
        assert found[("mailpipe_part_restarts_total", (("part", "probes"),))] == 0  # there before any failure
        serving.stop()
        assert await task == 0

    with caplog.at_level(logging.ERROR, logger="mailpipe.daemon"):
        asyncio.run(scenario())
    (record,) = [r for r in caplog.records if r.getMessage() == "part failed: starting it again"]
    assert record.part == "monitors" and "a bug in a monitor" in str(record.exc_info[1])
