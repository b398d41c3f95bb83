"""CPU time by thread pool, as a Prometheus counter: which part of the daemon the CPU goes to.

Why: ``process_cpu_seconds_total`` says how busy the daemon is, not which part of it. Its parts
are threads sharing one GIL: the event loop (``main``: SMTP, the spool worker, the stages that
await), the store's threads (``store``: profile, score, assign), the Maildir writer
(``maildir``), the DNS threads of authentication (``auth``), each spool's committer
(``spool:inbound.sqlite``...). When triage falls behind intake, the pool that grows says what to
cut or to move to a process of its own. Measured on 2026-12-02 (``bench/drain.py``), the event
loop and the store's threads each took about as much as the other: 1.1-1.6 ms a message,
by how fast the machine was that minute.

Read from ``/proc/self/task`` at each scrape (Linux only; elsewhere the metric is absent). A
thread's pool is its Python name without the number a pool gives each thread (``store_0``,
``dkim-sign:1``, ``asyncio-waitpid-4242``). A thread that ended keeps counting towards its pool
with its CPU as last read, so the counter never goes down; what it used after that read is lost,
and the kernel counts in clock ticks (10 ms): threads living for milliseconds hardly show, the
daemon's pools are long-lived. A thread Python does not know yet (it is starting) is counted from
the next scrape, under its pool's name, and one it still does not know then as ``native``.
"""

from __future__ import annotations

import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_TASKS = Path("/proc/self/task")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NUMBERED = re.compile(r"[-_:]\d+(?=[-_:]|$)")  # store_0, dkim-sign:1, psycopg_pool's pool-1-worker-0
_UNNAMED = re.compile(r"^Thread-\d+")
# A thread Python did not start (a library's own): no name to go by.
NATIVE = "native"


def pool_of(name: str) -> str:
    """The pool a thread belongs to, from its Python name."""
    if name == "MainThread":
        return "main"
    return _UNNAMED.sub("Thread", _NUMBERED.sub("", name))


def cpu_seconds(stat: Path) -> tuple[float, float] | None:
    """User and system CPU seconds from a ``/proc`` stat file (a process's or a thread's); None
    once it has ended."""
    try:
        fields = stat.read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _family() -> CounterMetricFamily:
    return CounterMetricFamily("mailpipe_thread_cpu_seconds",
                               "CPU time of the daemon's threads by pool (main is the event loop) and mode "
                               "(user, system); threads that ended count on.", labels=["thread", "mode"])


class ThreadCPU(Collector):
    """``mailpipe_thread_cpu_seconds_total{thread, mode}``, summed over each pool's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes may overlap
        self._last: dict[int, tuple[str, float, float]] = {}  # native id -> pool, user, system as last read
        self._unnamed: set[int] = set()  # threads not known to Python at the last scrape
        self._ended: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def describe(self) -> Iterator[CounterMetricFamily]:
        """The metric's name for the registry, without reading ``/proc`` (registering would else
        collect once, for every ``Metrics`` made)."""
        yield _family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        reading = self.read()
        if not reading:  # no /proc/self/task
            return
        family = _family()
        for pool, (user, system) in sorted(reading.items()):
            family.add_metric([pool, "user"], user)
            family.add_metric([pool, "system"], system)
        yield family

    def read(self) -> dict[str, tuple[float, float]]:
        """User and system CPU seconds by pool, ended threads included; nothing without /proc."""
        if not _TASKS.is_dir():
            return {}
        with self._lock:
            tasks = [int(task.name) for task in _TASKS.iterdir()]
            # Named after the listing: a Python thread in it has registered by now, unless it is
            # in its first instants (then it waits for the next scrape).
            names = {thread.native_id: pool_of(thread.name) for thread in threading.enumerate()}
            now: dict[int, tuple[str, float, float]] = {}
            unnamed: set[int] = set()
            for tid in tasks:
                cpu = cpu_seconds(_TASKS / str(tid) / "stat")
                if cpu is None:
                    continue
                # Python forgets a thread as it ends, before the kernel does: it keeps its pool.
                pool = names.get(tid) or (self._last[tid][0] if tid in self._last else None)
                if pool is None and tid not in self._unnamed:
                    unnamed.add(tid)  # starting, perhaps: named by the next scrape
                    continue
                now[tid] = (pool or NATIVE, *cpu)
            self._unnamed = unnamed
            for tid, (pool, user, system) in self._last.items():
                current = now.get(tid)
                # Ended, or its id taken by a new thread since: what it used stays counted.
                if current is None or current[0] != pool or current[1] < user or current[2] < system:
                    self._ended[pool][0] += user
                    self._ended[pool][1] += system
            self._last = now
            totals = {pool: (user, system) for pool, (user, system) in self._ended.items()}
            for pool, user, system in now.values():
                before = totals.get(pool, (0.0, 0.0))
                totals[pool] = (before[0] + user, before[1] + system)
            return totals
