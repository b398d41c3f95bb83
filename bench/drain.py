"""Where the daemon's CPU goes when it triages its own spool, against what intake costs it.

The real daemon, the 100,000-customer store of bench/triage.py and its local unbound: the spool
is filled over SMTP with hand-offs paused (``workers = 0``), then the daemon is started again to
triage it. Wall rates swing by half on a shared two-core machine, so beside the drain rate this
prints what contention hardly moves: the daemon's CPU (user + system, from /proc) per message
while it accepts the messages and while it triages them (and the CPU of the urgency model's own
process, apart), their ratio, the triage rate one core
could give at that cost (to set against durable intake's rate, which is bound by its fsyncs more
than its CPU), how much of that CPU is the kernel's and how often the daemon's threads were
switched out per message (GIL hand-offs between the event loop and its threads show there, as
futex waits), spool commits per message, each stage's mean wall time and the CPU of each of its
thread pools per message (the event loop, the store's threads, the Maildir writer...), from the
daemon's own metrics.

Its work directory is the system's temporary directory. Where thousands of files were deleted
there minutes before (the mailboxes of an earlier run), ext4 looks past each recently deleted
inode for a free one whenever it creates a file: about 1 ms more kernel CPU per triaged message
here (2026-12-02, 2.0 against 0.95 ms), seen in ``perf`` as ``recently_deleted`` and
``find_inode_bit``. Runs to compare go each in a new top-level directory
(``TMPDIR=/bench-1``), which ext4 places in a block group of its own.

Prints figures and ratios; asserts nothing. Run: python bench/drain.py [--messages N] [--workers W]
[--no-model]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import triage  # noqa: E402  (bench/triage.py: the store, the corpus, the SMTP senders)

from tests.dns_peer import Unbound  # noqa: E402


@dataclass(frozen=True)
class Usage:
    """What the daemon spent so far: CPU seconds in user space and in the kernel, and context
    switches of its threads (those of threads still running: executor threads live on)."""

    user: float
    system: float
    switches: int

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def __sub__(self, before: Usage) -> Usage:
        return Usage(self.user - before.user, self.system - before.system, self.switches - before.switches)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.user + other.user, self.system + other.system, self.switches + other.switches)


def usage(pid: int) -> Usage:
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        switches += sum(int(n) for n in re.findall(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)$", status, re.M))
    return Usage(*triage.cpu_seconds(pid), switches)


def children_usage(pid: int) -> Usage:
    """What the daemon's child processes spent so far (the urgency model's own process)."""
    total = Usage(0.0, 0.0, 0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                total = total + usage(int(child))
            except OSError:  # it ended meanwhile
                continue
    return total


@contextmanager
def daemon(work: Path, state: Path, nameserver: str, workers: int,
           model: bool = True) -> Iterator[tuple[int, int, int]]:
    """bench/triage.py's daemon, with its metrics port (from the config it wrote) and its pid
    (from the spool's lock file)."""
    with triage.daemon(work, state, nameserver, workers, model) as port:
        listen = tomllib.loads((work / "mailpipe.toml").read_text())["metrics"]["listen"]
        metrics = int(listen.rpartition(":")[2])
        yield port, metrics, int((state / "spool" / "lock").read_text())


def metric_values(port: int, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {labels: float(value) for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M)}


def metric_value(port: int, name: str) -> float:
    """A metric without labels (0 when absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


def thread_cpu(port: int) -> dict[str, float]:
    """CPU seconds so far by thread pool, user and system together (``mailpipe.thread_cpu``)."""
    by_pool: dict[str, float] = {}
    for labels, seconds in metric_values(port, "mailpipe_thread_cpu_seconds_total").items():
        pool = re.search(r'thread="([^"]+)"', labels)[1]  # type: ignore[index]
        by_pool[pool] = by_pool.get(pool, 0.0) + seconds
    return by_pool


def stage_means(port: int) -> dict[str, float]:
    sums, counts = (metric_values(port, f"mailpipe_stage_seconds_{kind}") for kind in ("sum", "count"))
    means = {}
    for labels, total in sums.items():
        if 'queue="inbound"' in labels and counts.get(labels):
            means[re.search(r'stage="([^"]+)"', labels)[1]] = 1000 * total / counts[labels]  # type: ignore[index]
    return means


def measure(messages: int, workers: int, model: bool) -> None:
    dns_server = Unbound(triage.senders_zones())
    work = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    try:
        state = work / "state"
        state.mkdir()
        triage.populate(state / "store.sqlite")
        samples = triage.corpus(messages)
        with daemon(work, state, dns_server.address, 0, model) as (port, _, pid):
            time.sleep(1)  # the model's training at start is not intake
            before = usage(pid)
            accepted = triage.send(port, samples, None)
            intake = usage(pid) - before
        with daemon(work, state, dns_server.address, workers, model) as (_, metrics, pid):
            while not triage.delivered(state, accepted):
                time.sleep(0.02)
            before, started, pools_before = usage(pid), time.monotonic(), thread_cpu(metrics)
            # The model's process takes the model (a second of CPU) as triage starts: its CPU per
            # message is counted from when it holds it, over the messages delivered since.
            while model and not metric_value(metrics, "mailpipe_urgency_reader_up"):
                time.sleep(0.02)
            model_before, model_from = children_usage(pid), len(triage.delivered(state, accepted))
            seen, count = 0, 0
            while True:
                time.sleep(0.5)
                count = len(triage.delivered(state, accepted))
                if count == seen:
                    break
                seen = count
            drain, reading = usage(pid) - before, children_usage(pid) - model_before
            pools = {pool: seconds - pools_before.get(pool, 0.0) for pool, seconds in thread_cpu(metrics).items()}
            times = sorted(triage.delivered(state, accepted).values())
            time.sleep(2.5)  # the daemon adds its spool commits to its metrics every 2 s (_STATS_INTERVAL)
            commits = sum(metric_values(metrics, "mailpipe_spool_commits_total").values())
            means = stage_means(metrics)
        rate = (len(times) - 1) / (times[-1] - times[0])
        intake_cpu, drain_cpu = intake.cpu / len(accepted), drain.cpu / count
        print(f"{len(accepted)} accepted, {count} delivered, {workers} slots, {os.cpu_count()} CPUs")
        print(f"the daemon triaging its spool:          {rate:8.0f} msgs/s (wall, {time.monotonic() - started:.1f} s)")
        print(f"daemon CPU per message, durable intake: {intake_cpu * 1000:8.2f} ms (baseline)")
        print(f"daemon CPU per message, triage:         {drain_cpu * 1000:8.2f} ms")
        if model:
            print(f"CPU per message in the urgency model's own process: {reading.cpu * 1000 / (count - model_from):.2f}"
                  f" ms (over the {count - model_from} messages after it held the model)")
        print(f"triage CPU / intake CPU = {drain_cpu / intake_cpu:.2f}; one core's worth of triage: "
              f"{1 / drain_cpu:.0f} msgs/s")
        print(f"of which the kernel's: intake {intake.system / intake.cpu:.0%}, triage {drain.system / drain.cpu:.0%}"
              f" ({drain.user * 1000 / count:.2f} ms user, {drain.system * 1000 / count:.2f} ms system)")
        print(f"thread switches per message:            {drain.switches / count:8.1f}"
              f" (intake: {intake.switches / len(accepted):.1f})")
        print(f"spool commits per triaged message:      {commits / count:8.2f}")
        print("stage wall time, mean ms: " + ", ".join(f"{name} {ms:.1f}" for name, ms in means.items()))
        print("CPU ms per message by thread (main: the event loop): " + ", ".join(
            f"{pool} {seconds * 1000 / count:.2f}" for pool, seconds in sorted(pools.items(), key=lambda kv: -kv[1])
            if seconds * 1000 / count >= 0.01))
    finally:
        dns_server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-model", action="store_true", help="triage.model = false: the keyword rules alone")
    args = parser.parse_args()
    measure(args.messages, args.workers, not args.no_model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
