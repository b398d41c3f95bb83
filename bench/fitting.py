"""What fitting the urgency model costs the daemon's event loop, fitted in a thread or apart.

An agent's correction starts a fit of the model (15-20 s of one core), during the working day.
Beside each way of fitting, a probe on the event loop does what triage does between waits:
pure-Python work units of about half a millisecond, each after a 1 ms sleep. It prints how many
units the loop got through per second, against the same probe with nothing beside it (the
baseline, first in the same run), and the loop's lag (how late each sleep ended) at p99 and max:
1. in a thread of the daemon's process, as the daemon fitted until 2026-11-30
   (``mailpipe.triage.fitting.fitted`` under ``asyncio.to_thread``);
2. in a process of its own, as the daemon fits now (``fitted_apart``).

Prints figures and ratios; asserts nothing. Run: python bench/fitting.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mailpipe.data import shipped  # noqa: E402
from mailpipe.triage import corpus  # noqa: E402
from mailpipe.triage.fitting import fitted, fitted_apart  # noqa: E402
from mailpipe.triage.model import Example  # noqa: E402

IDLE_SECONDS = 15.0


def work_unit() -> int:
    """About half a millisecond of pure-Python CPU, as a message's stages spend between waits."""
    total = 0
    for i in range(20000):
        total += i * i
    return total


async def probed(beside: Callable[[], Awaitable[object]]) -> tuple[float, float, float, float]:
    """Seconds ``beside`` took, work units per second meanwhile, loop lag p99 and max in ms."""
    stop = asyncio.Event()

    async def probe() -> tuple[list[float], int]:
        lags, done = [], 0
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)
            work_unit()
            done += 1
        return lags, done

    task = asyncio.create_task(probe())
    started = time.perf_counter()
    await beside()
    elapsed = time.perf_counter() - started
    stop.set()
    lags, done = await task
    lags.sort()
    return elapsed, done / elapsed, lags[int(len(lags) * 0.99)] * 1000, lags[-1] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    found: list[Example] = corpus.load([shipped("rules") / "corpus"])
    print(f"fitting the urgency model on {len(found)} labelled messages; {args.rounds} rounds")
    ways: dict[str, Callable[[], Awaitable[object]]] = {
        "nothing beside (baseline)": lambda: asyncio.sleep(IDLE_SECONDS),
        "a fit in a thread": lambda: asyncio.to_thread(fitted, found),
        "a fit in its own process": lambda: fitted_apart(found),
    }
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, beside in ways.items():
            results[name].append(asyncio.run(probed(beside)))
    baseline = statistics.median(rate for _, rate, _, _ in results["nothing beside (baseline)"])
    for name, runs in results.items():
        elapsed, rate, p99, worst = (statistics.median(run[i] for run in runs) for i in range(4))
        print(f"{name:<28} {elapsed:5.1f} s  {rate:5.0f} units/s ({rate / baseline:.2f} of the baseline)"
              f"  loop lag p99 {p99:6.1f} ms, max {worst:5.0f} ms (medians of {args.rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
