"""Failing storage: a full disk, a read-only store, a corrupt spool. None of it is the mail's
fault: nothing is quarantined, /healthz and the gauges say what is wrong, intake answers 4xx
rather than losing anything, and delivery resumes by itself once the fault clears."""

from __future__ import annotations

import asyncio
import json
import smtplib
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailpipe import spool
from tests.conftest import Daemon
from tests.test_delivery import wait_until
from tests.test_lifecycle import metrics


def health(daemon: Daemon) -> tuple[int, dict[str, str]]:
    try:
        response = urllib.request.urlopen(daemon.metrics_url + "/healthz", timeout=5)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["problems"]
    return response.status, json.loads(response.read())["problems"]


def queue_states(daemon: Daemon) -> Counter[str]:
    states: Counter[str] = Counter()
    for name in ("inbound", "outbound"):
        with sqlite3.connect(daemon.state / "spool" / f"{name}.sqlite") as conn:
            states.update(dict(conn.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall()))
    return states


def big_mail(number: int, size: int = 1024 * 1024) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return (f"From: Customer <customer{number}@example.org>\r\nTo: support@example.test\r\n"
            f"Subject: big {number}\r\nMessage-ID: <big{number}@example.org>\r\n\r\n").encode() + line * (size // 78)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, grown to 400 MiB by ``grow``; lazily unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def grow(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=400m", str(mount)], check=True)


def test_a_full_disk_refuses_with_4xx_loses_nothing_and_delivery_resumes_by_itself(make_daemon, small_disk) -> None:
    daemon = make_daemon({"state_directory": str(small_disk / "state"), "inbound": {"max_message_size": "4MiB"}})
    acknowledged, refused = [], None
    for number in range(60):
        try:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
                client.sendmail("customer@example.org", ["support@example.test"], big_mail(number))
        except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            refused = exc
            break
        acknowledged.append(f"<big{number}@example.org>")
    assert refused is not None, "the disk never filled up"
    code = refused.smtp_code if hasattr(refused, "smtp_code") else 0
    assert 400 <= code < 500, refused
    assert acknowledged

    deadline, seen = time.monotonic() + 15, []
    while time.monotonic() < deadline and not any(status == 503 for status, _ in seen):
        seen.append(health(daemon))
        time.sleep(0.2)
    assert any(status == 503 and problems for status, problems in seen), seen

    grow(small_disk)
    wait_until(lambda: len(daemon.delivered(timeout=0, expect=len(acknowledged))) >= len(acknowledged), timeout=90)
    arrived = Counter(m["Message-ID"] for m in daemon.delivered(timeout=0, expect=len(acknowledged)))
    assert set(arrived) == set(acknowledged) and set(arrived.values()) == {1}
    wait_until(lambda: health(daemon)[0] == 200, timeout=60)
    assert metrics(daemon)[("mailpipe_spool_up", (("spool", "inbound"),))] == 1

    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:  # and new mail flows again
        client.sendmail("customer@example.org", ["support@example.test"], big_mail(999, 1000))
    wait_until(lambda: "<big999@example.org>" in {m["Message-ID"] for m in daemon.delivered(timeout=0)}, timeout=30)
    assert queue_states(daemon)["quarantine"] == 0
    assert daemon.stop() == 0
    assert "quarantined" not in daemon.log()
    assert "Traceback" not in daemon.log()


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[list[Path]]:
    """Files made immutable with chattr (root cannot write them either), made mutable again at the end."""
    made: list[Path] = []
    yield made
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def chattr(path: Path, flag: str) -> None:
    result = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr {flag} is not possible here: {result.stderr.strip()}")


def test_a_read_only_store_defers_without_quarantine_says_so_and_recovers(make_daemon, immutable) -> None:
    daemon = make_daemon()
    assert daemon.stop() == 0
    store = daemon.state / "store.sqlite"
    with sqlite3.connect(store) as conn:  # everything in the main file, so the WAL is not needed to read it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    chattr(store, "+i")
    immutable.append(store)
    daemon.start()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.sendmail("customer@example.org", ["support@example.test"], big_mail(1, 1000))

    wait_until(lambda: "store" in health(daemon)[1], timeout=30)
    assert health(daemon)[0] == 503
    wait_until(lambda: metrics(daemon).get(("mailpipe_store_up", ())) == 0, timeout=15)
    time.sleep(4)  # several retries: max_stage_failures is 3 and retry_initial 1 s in the tests
    assert queue_states(daemon)["quarantine"] == 0
    assert not daemon.delivered(timeout=0)

    chattr(store, "-i")
    immutable.remove(store)
    (delivered,) = daemon.delivered(timeout=60)
    assert delivered["Message-ID"] == "<big1@example.org>"
    wait_until(lambda: health(daemon)[0] == 200, timeout=30)
    wait_until(lambda: metrics(daemon).get(("mailpipe_store_up", ())) == 1, timeout=15)
    assert queue_states(daemon)["quarantine"] == 0
    assert daemon.stop() == 0


def test_a_committer_survives_a_failing_group_and_a_probe_clears_the_fault(tmp_path: Path) -> None:
    envelope = spool.Envelope("a@example.org", ("b@example.test",), "127.0.0.1", "client", "inbound")

    async def scenario() -> None:
        queue = spool.Spool(tmp_path / "spool.sqlite")
        try:
            def full(conn: sqlite3.Connection) -> None:
                raise sqlite3.OperationalError("database or disk is full")

            with pytest.raises(sqlite3.OperationalError):
                await queue._committer.submit(full)
            assert "disk is full" in queue.fault and queue.healthy
            qid = await queue.enqueue(envelope, b"Subject: x\r\n\r\nbody\r\n")  # the thread still writes
            assert queue.fault  # until a probe proves the file whole and writable
            assert await queue.probe() and not queue.fault
            assert [m.id for m in await queue.claim(10, "inbound")] == [qid]
        finally:
            queue.close()

    asyncio.run(scenario())


def test_a_corrupt_spool_page_fails_the_probe(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    envelope = spool.Envelope("a@example.org", ("b@example.test",), "127.0.0.1", "client", "inbound")

    async def fill() -> None:
        queue = spool.Spool(path)
        for _ in range(50):
            await queue.enqueue(envelope, b"x" * 3000)
        queue.close()

    asyncio.run(fill())
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as handle:  # garbage over a page in the middle of the table
        handle.seek(4096 * 10)
        handle.write(b"\xde\xad\xbe\xef" * 1024)

    async def check() -> None:
        queue = spool.Spool(path)
        try:
            assert not await queue.probe()
        finally:
            queue.close()

    asyncio.run(check())
