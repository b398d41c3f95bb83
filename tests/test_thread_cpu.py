"""``mailpipe_thread_cpu_seconds_total``: the daemon's CPU by thread pool, never going down."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from mailpipe.metrics import Metrics
from mailpipe.thread_cpu import ThreadCPU, pool_of

pytestmark = pytest.mark.skipif(not ThreadCPU().read(), reason="needs /proc/self/task (Linux)")

BURN = 0.2  # CPU seconds a test thread spends: many clock ticks, however busy the machine


def burn(seconds: float = BURN) -> None:
    """Spends ``seconds`` of this thread's CPU, however long that takes on a busy machine."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def total(reading: dict[str, tuple[float, float]], pool: str) -> float:
    user, system = reading.get(pool, (0.0, 0.0))
    return user + system


@pytest.mark.parametrize(("name", "pool"), [
    ("MainThread", "main"),
    ("store_0", "store"),
    ("store_12", "store"),
    ("dkim-sign:1", "dkim-sign"),
    ("asyncio-waitpid-4242", "asyncio-waitpid"),
    ("spool:inbound.sqlite", "spool:inbound.sqlite"),
    ("Thread-7 (serve)", "Thread (serve)"),
    ("maildir", "maildir"),
    ("pool-1-worker-0", "pool-worker"),
])
def test_a_thread_counts_towards_its_pool_without_its_number(name: str, pool: str) -> None:
    assert pool_of(name) == pool


def test_a_pool_threads_cpu_shows_under_the_pool_name() -> None:
    collector = ThreadCPU()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="burner") as pool:
        for future in [pool.submit(burn) for _ in range(2)]:
            future.result()
        reading = collector.read()
    assert total(reading, "burner") >= BURN  # two threads, each BURN; ticks may round each down a little


def test_a_thread_that_ended_still_counts() -> None:
    collector = ThreadCPU()
    burned, finish = threading.Event(), threading.Event()

    def work() -> None:
        burn()
        burned.set()
        finish.wait()

    thread = threading.Thread(target=work, name="finisher")
    thread.start()
    burned.wait()
    before = total(collector.read(), "finisher")
    finish.set()
    thread.join()
    assert total(collector.read(), "finisher") >= before  # Python forgot it; the kernel may not have yet
    deadline = time.monotonic() + 30
    while thread.native_id in {int(task.name) for task in Path("/proc/self/task").iterdir()}:
        assert time.monotonic() < deadline, "the ended thread stayed in /proc/self/task"
        time.sleep(0.01)
    assert total(collector.read(), "finisher") >= before >= BURN / 2


def test_the_metric_is_exported_by_pool_and_mode() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert 'mailpipe_thread_cpu_seconds_total{mode="user",thread="main"}' in text
    assert 'mailpipe_thread_cpu_seconds_total{mode="system",thread="main"}' in text
