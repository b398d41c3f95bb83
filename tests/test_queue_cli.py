"""``mailpipe queue``: the postqueue/postsuper of mailpipe, on a spool with real entries."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailpipe.spool import Envelope, Spool

ENVELOPE = Envelope("customer@example.org", ("support@example.test",), "192.0.2.1", "client", "inbound")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailpipe.toml"
    path.write_text(f'state_directory = "{tmp_path / "state"}"\n')
    return path


def enqueue(config: Path, *bodies: bytes) -> list[str]:
    async def body() -> list[str]:
        spool = Spool(config.parent / "state" / "spool" / "inbound.sqlite")
        try:
            return [await spool.enqueue(ENVELOPE, data) for data in bodies]
        finally:
            spool.close()

    return asyncio.run(body())


def mailpipe(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailpipe", "queue", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=30)


def listed(config: Path) -> dict[str, dict]:
    result = mailpipe(config, "list", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["id"]: entry for entry in map(json.loads, result.stdout.splitlines())}


def test_list_shows_each_message_like_postqueue(config: Path) -> None:
    (qid,) = enqueue(config, b"Subject: x\r\n\r\nbody\r\n")
    result = mailpipe(config, "list")
    assert result.returncode == 0
    assert qid in result.stdout
    assert "customer@example.org" in result.stdout and "support@example.test" in result.stdout
    assert "in 1 Request." in result.stdout


def test_list_of_an_empty_queue_says_so(config: Path) -> None:
    enqueue(config)
    assert "Mail queue is empty" in mailpipe(config, "list").stdout


def test_list_without_a_spool_says_where_it_looked_and_creates_nothing(config: Path) -> None:
    result = mailpipe(config, "list")
    assert result.returncode == 1
    assert f"no spool in {config.parent / 'state' / 'spool'}" in result.stderr
    assert "runuser -u mailpipe" in result.stderr
    assert not (config.parent / "state").exists()


def test_list_json_has_one_object_per_message(config: Path) -> None:
    ids = enqueue(config, b"a", b"b")
    entries = listed(config)
    assert sorted(entries) == sorted(ids)
    assert entries[ids[0]]["state"] == "incoming"
    assert entries[ids[0]]["recipients"] == ["support@example.test"]


def test_show_prints_envelope_and_content(config: Path) -> None:
    (qid,) = enqueue(config, b"Subject: show me\r\n\r\nbody\r\n")
    result = mailpipe(config, "show", qid)
    assert result.returncode == 0
    assert f"inbound/{qid}" in result.stdout
    assert "Subject: show me\n" in result.stdout


def test_show_of_an_unknown_id_exits_1(config: Path) -> None:
    enqueue(config, b"x")
    result = mailpipe(config, "show", "NOSUCHID")
    assert result.returncode == 1
    assert "not found" in result.stderr


def test_hold_and_release(config: Path) -> None:
    (qid,) = enqueue(config, b"x")
    assert mailpipe(config, "hold", qid).returncode == 0
    assert listed(config)[qid]["state"] == "hold"
    assert mailpipe(config, "release", qid).returncode == 0
    assert listed(config)[qid]["state"] == "incoming"


def test_delete_all(config: Path) -> None:
    enqueue(config, b"a", b"b", b"c")
    result = mailpipe(config, "delete", "ALL")
    assert result.returncode == 0
    assert result.stdout.count(": delete") == 3
    assert listed(config) == {}


def test_an_unknown_id_among_known_ones_exits_1_after_acting_on_the_rest(config: Path) -> None:
    (qid,) = enqueue(config, b"x")
    result = mailpipe(config, "delete", qid, "NOSUCHID")
    assert result.returncode == 1
    assert "NOSUCHID" in result.stderr
    assert listed(config) == {}


def test_flush_reports_how_many_deferred_messages_it_made_due(config: Path) -> None:
    enqueue(config, b"x")
    result = mailpipe(config, "flush")
    assert result.returncode == 0
    assert "0 deferred" in result.stdout


def test_a_running_daemon_delivers_a_message_once_it_is_released(make_daemon) -> None:
    daemon = make_daemon(start=False)
    daemon.write_config()
    (qid,) = enqueue(daemon.config_path, b"Subject: held\r\n\r\nbody\r\n")
    assert mailpipe(daemon.config_path, "hold", qid).returncode == 0
    daemon.start()
    assert daemon.delivered(timeout=1.5) == []
    assert mailpipe(daemon.config_path, "release", qid).returncode == 0
    (delivered,) = daemon.delivered(timeout=5)
    assert delivered["Subject"] == "[#1] held"


def fail_once(config: Path, qid: str, delay: float = 600) -> None:
    """The worker's view: claim the message and defer it after a failed attempt."""
    async def body() -> None:
        spool = Spool(config.parent / "state" / "spool" / "inbound.sqlite")
        try:
            (message,) = await spool.claim(1)
            assert message.id == qid
            await spool.defer(qid, "451 try later", delay)
        finally:
            spool.close()

    asyncio.run(body())


def test_a_manual_flush_is_not_counted_as_a_failed_attempt(config: Path) -> None:
    (qid,) = enqueue(config, b"Subject: x\r\n\r\nbody\r\n")
    fail_once(config, qid)
    assert listed(config)[qid]["attempts"] == 1
    assert "1 deferred message(s)" in mailpipe(config, "flush").stdout
    fail_once(config, qid)  # the attempt the operator asked for fails too
    assert listed(config)[qid]["attempts"] == 1


def test_show_prints_local_times_and_ages_not_epoch_seconds(config: Path) -> None:
    (qid,) = enqueue(config, b"Subject: x\r\n\r\nbody\r\n")
    fail_once(config, qid)
    shown = mailpipe(config, "show", qid).stdout
    envelope = shown.split("*** MESSAGE CONTENTS ***")[0]
    assert not re.search(r"\b1\d{9}(\.\d+)?\b", envelope), envelope
    assert re.search(r"arrival_time: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d JST", envelope)  # the desk's zone: Asia/Tokyo
    assert re.search(r"next_attempt: .* \(in (9|10)m", envelope)


def test_a_closed_pipe_ends_the_listing_quietly(config: Path) -> None:
    enqueue(config, *[b"Subject: x\r\n\r\n" + b"y" * 100 + b"\r\n"] * 300)
    listing = subprocess.Popen([sys.executable, "-m", "mailpipe", "queue", "list", "--json", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.readline()
    listing.stdout.close()  # `| head -1`
    assert listing.wait(timeout=30) == 141
    assert listing.stderr.read() == b""
