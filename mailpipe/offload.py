"""A few threads of our own for CPU work that releases the GIL: OpenSSL's DKIM signatures.

A call is a tuple on a queue that one of a fixed few threads takes; its caller awaits an
asyncio future, and the results that finish while the event loop is busy are settled in one
wake-up of the loop. ``asyncio.to_thread`` did the same job for 25-45 µs more CPU per 5 KB reply
(bench/outbound.py, of a hand-off costing ~480): per call it copies the context, wraps a
concurrent future in an asyncio one through callbacks and locks, wakes the loop once per result,
and lends the call to the loop's default executor, whose threads (cores + 4: six here) all
contend for the GIL with the loop whenever their signatures return. Not for calls that wait on I/O (the store, the
network): those belong to the default executor, whose threads grow with the waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
_Call = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]  # future, result, error


class Offload:
    """``threads`` threads running the calls given to ``run`` in the order given."""

    def __init__(self, name: str, threads: int):
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._settling: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}  # a wake-up is on its way
        self._threads = [threading.Thread(target=self._run, name=f"{name}:{n}", daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((function, args, future))
        return future

    def close(self) -> None:
        """Runs the calls already given, then ends the threads."""
        for _ in self._threads:
            self._calls.put(None)
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            function, args, future = call
            try:
                outcome: Outcome = (future, function(*args), None)
            except BaseException as exc:  # the caller's to handle, as in ThreadPoolExecutor: the thread goes on
                outcome = (future, None, exc)
            self._settle_soon(future.get_loop(), outcome)

    def _settle_soon(self, loop: asyncio.AbstractEventLoop, outcome: Outcome) -> None:
        with self._lock:
            waiting = self._settling.get(loop)
            if waiting is not None:  # the loop has not run the last wake-up yet: this rides with it
                waiting.append(outcome)
                return
            self._settling[loop] = [outcome]
        try:
            loop.call_soon_threadsafe(self._settle, loop)
        except RuntimeError:  # that loop closed meanwhile: nobody waits for these
            with self._lock:
                self._settling.pop(loop, None)

    def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            outcomes = self._settling.pop(loop)
        settle(outcomes)


def settle(outcomes: list[Outcome]) -> None:
    """Each future gets its result or error, unless its caller gave up waiting (cancelled). A
    future refuses a StopIteration (a TypeError that would leave the rest of the outcomes
    unsettled, their callers waiting forever): its caller gets a RuntimeError from it instead."""
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if isinstance(error, StopIteration):
            refused, error = error, RuntimeError(f"StopIteration cannot be raised into a future: {error}")
            error.__cause__ = refused
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def settle_from_thread(outcomes: Iterable[Outcome]) -> None:
    """``settle`` for outcomes a thread of ours finished as a group (a commit, a Maildir group):
    one wake-up of each waiting loop for all of its outcomes, not one per outcome. A loop closed
    meanwhile has nobody waiting: its outcomes are dropped."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, settled)
