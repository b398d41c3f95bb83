"""The signing threads: each call's result or error reaches its own caller, whatever the loop does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from mailpipe.offload import Offload


@pytest.fixture
def threads() -> Iterator[Offload]:
    offload = Offload("test", 2)
    yield offload
    offload.close()


def test_each_caller_gets_the_result_of_its_own_call(threads: Offload) -> None:
    async def many() -> list[int]:
        return await asyncio.gather(*(threads.run(pow, n, 2) for n in range(200)))

    assert asyncio.run(many()) == [n * n for n in range(200)]


def test_a_call_that_raises_raises_in_its_caller_alone(threads: Offload) -> None:
    async def both() -> list[object]:
        return await asyncio.gather(threads.run(int, "x"), threads.run(int, "7"), return_exceptions=True)

    failed, answered = asyncio.run(both())
    assert isinstance(failed, ValueError) and answered == 7


def test_results_finished_while_the_loop_is_busy_all_reach_their_callers(threads: Offload) -> None:
    """The loop blocks until every call has finished, so their results wait for one wake-up."""
    finished = threading.Semaphore(0)

    def call(n: int) -> int:
        finished.release()
        return n

    async def busy() -> list[int]:
        futures = [threads.run(call, n) for n in range(20)]
        for _ in futures:
            finished.acquire(timeout=30)
        return await asyncio.wait_for(asyncio.gather(*futures), 30)

    assert asyncio.run(busy()) == list(range(20))


def test_a_caller_that_stopped_waiting_does_not_stop_the_others(threads: Offload) -> None:
    gate = threading.Event()

    async def one_gives_up() -> list[int]:
        abandoned = threads.run(gate.wait, 30)
        abandoned.cancel()
        others = [threads.run(abs, -n) for n in range(10)]
        gate.set()
        return await asyncio.wait_for(asyncio.gather(*others), 30)

    assert asyncio.run(one_gives_up()) == list(range(10))


def test_the_threads_outlive_a_caller_whose_event_loop_closed_before_its_answer(threads: Offload) -> None:
    gate = threading.Event()

    async def abandoned() -> None:
        threads.run(gate.wait, 30)  # answered after this loop is gone
        threads.run(gate.wait, 30)

    asyncio.run(abandoned())
    gate.set()

    async def later() -> int:
        return await asyncio.wait_for(threads.run(len, "after"), 30)

    assert asyncio.run(later()) == 5


def test_closing_runs_the_calls_already_given() -> None:
    offload = Offload("test", 1)
    ran: list[int] = []

    async def give() -> None:
        for n in range(5):
            offload.run(ran.append, n)

    asyncio.run(give())
    offload.close()
    assert ran == list(range(5))


def test_a_call_that_raises_stop_iteration_does_not_keep_the_results_settled_with_it_from_their_callers(
        threads: Offload) -> None:
    """A future cannot hold a StopIteration (asyncio refuses it with a TypeError): the call's caller
    gets a RuntimeError instead, and the other results of the same wake-up still arrive."""
    gate = threading.Event()

    def stops() -> None:
        gate.wait(30)
        raise StopIteration

    async def together() -> list[object]:
        futures = [threads.run(stops), threads.run(gate.wait, 30)]
        gate.set()
        threading.Event().wait(0.2)  # the loop is busy while both finish: one wake-up settles both
        return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)

    stopped, answered = asyncio.run(together())
    assert isinstance(stopped, RuntimeError) and isinstance(stopped.__cause__, StopIteration)
    assert answered is True


class _Abort(BaseException):
    """Not an Exception: what a library's own base exception or a SystemExit looks like."""


def test_a_call_that_raises_a_base_exception_raises_it_in_its_caller_and_the_threads_go_on() -> None:
    offload = Offload("test", 1)

    def aborts() -> None:
        raise _Abort

    async def after_the_abort() -> tuple[object, int]:
        aborted = await asyncio.wait_for(asyncio.gather(offload.run(aborts), return_exceptions=True), 30)
        return aborted[0], await asyncio.wait_for(offload.run(len, "next"), 30)

    try:
        aborted, answered = asyncio.run(after_the_abort())
    finally:
        offload.close()
    assert isinstance(aborted, _Abort) and answered == 4
