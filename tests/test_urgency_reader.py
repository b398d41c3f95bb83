"""The urgency model read in a process of its own (mailpipe.triage.reader)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from mailpipe import config as configuration
from mailpipe.data import shipped
from mailpipe.message import parse
from mailpipe.metrics import Metrics
from mailpipe.triage import corpus, rules
from mailpipe.triage import load as triage_load
from mailpipe.triage.context import Context, document
from mailpipe.triage.model import Example, Reading, UrgencyModel, train
from mailpipe.triage.reader import Reader
from mailpipe.triage.score import evaluate

from .test_urgency_model import SMALL

T = TypeVar("T")
NOW = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)
EXPLAINED = ((("critical",), 0.0), (("critical", "high"), 0.0), (("low",), 0.0))
TEXTS = ["顧客リストが全て消えてしまいました。", "How do I set up DKIM?", "Thanks, no reply needed.", ""]


@pytest.fixture(scope="module")
def small_model() -> UrgencyModel:
    return train([Example(text, level) for level, text in SMALL], rules.LEVELS)


@pytest.fixture(scope="module")
def other_model() -> UrgencyModel:
    """Trained on the same mail with the levels turned round: it reads every text differently."""
    turned = dict(zip(rules.LEVELS, reversed(rules.LEVELS), strict=True))
    return train([Example(text, turned[level]) for level, text in SMALL], rules.LEVELS)


def in_process(model: UrgencyModel, text: str) -> Reading:
    return model.predict(text).reading(EXPLAINED)


def run(test: Callable[[Reader, Metrics], Awaitable[T]]) -> T:
    async def main() -> T:
        metrics = Metrics()
        reader = Reader(metrics)
        try:
            return await test(reader, metrics)
        finally:
            await reader.close()

    return asyncio.run(main())


async def serving(reader: Reader, model: UrgencyModel) -> int:
    """Installs ``model`` and waits until the process holds it; its pid."""
    reader.serve(model)
    await until(lambda: reader.holds(model))
    assert reader.pid is not None
    return reader.pid


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def reads(metrics: Metrics, process: str) -> float:
    return metrics.urgency_reads.labels(process)._value.get()


def test_a_reading_from_the_models_process_is_the_reading_made_in_the_daemon(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> list[Reading]:
        await serving(reader, small_model)
        return [await reader.read(small_model, text, EXPLAINED) for text in TEXTS]

    assert run(test) == [in_process(small_model, text) for text in TEXTS]


def test_the_reading_explains_the_level_sets_asked_for(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> Reading:
        await serving(reader, small_model)
        return await reader.read(small_model, TEXTS[0], EXPLAINED)

    reading = run(test)
    assert set(reading.explained) == {levels for levels, _ in EXPLAINED}
    assert reading.reasons(["critical"]) == small_model.predict(TEXTS[0]).reasons(["critical"])


def test_texts_are_read_in_the_daemon_until_the_process_holds_the_model(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading, float, float]:
        reader.serve(small_model)
        reading = await reader.read(small_model, TEXTS[0], EXPLAINED)  # before the process could start
        return reading, reads(metrics, "daemon"), reads(metrics, "model")

    assert run(test) == (in_process(small_model, TEXTS[0]), 1, 0)


def test_texts_are_read_in_the_process_once_it_holds_the_model(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> tuple[float, float]:
        await serving(reader, small_model)
        for text in TEXTS:
            await reader.read(small_model, text, EXPLAINED)
        return reads(metrics, "daemon"), reads(metrics, "model")

    assert run(test) == (0, len(TEXTS))


def test_many_texts_at_once_each_get_their_own_reading(small_model: UrgencyModel) -> None:
    texts = [f"{TEXTS[n % len(TEXTS)]} {n}" for n in range(200)]

    async def test(reader: Reader, metrics: Metrics) -> list[Reading]:
        await serving(reader, small_model)
        return await asyncio.gather(*(reader.read(small_model, text, EXPLAINED) for text in texts))

    assert run(test) == [in_process(small_model, text) for text in texts]


def test_a_newer_model_is_read_with_from_the_moment_it_is_installed(small_model: UrgencyModel,
                                                                     other_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading, Reading]:
        await serving(reader, small_model)
        reader.serve(other_model)
        at_once = await reader.read(other_model, TEXTS[0], EXPLAINED)
        await until(lambda: reader.holds(other_model))
        return at_once, await reader.read(other_model, TEXTS[0], EXPLAINED)

    expected = in_process(other_model, TEXTS[0])
    assert expected != in_process(small_model, TEXTS[0])
    assert run(test) == (expected, expected)


def test_a_process_that_dies_is_started_again_and_reading_goes_on_meanwhile(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading, Reading, float]:
        first = await serving(reader, small_model)
        os.kill(first, signal.SIGKILL)
        await until(lambda: not reader.holds(small_model))
        meanwhile = await reader.read(small_model, TEXTS[0], EXPLAINED)
        await until(lambda: reader.holds(small_model))
        assert reader.pid != first
        return meanwhile, await reader.read(small_model, TEXTS[0], EXPLAINED), \
            metrics.urgency_reader_starts._value.get()

    expected = in_process(small_model, TEXTS[0])
    assert run(test) == (expected, expected, 2)


def test_a_text_waiting_when_the_process_dies_is_read_in_the_daemon(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> Reading:
        pid = await serving(reader, small_model)
        os.kill(pid, signal.SIGSTOP)  # it reads nothing more, and then dies with the text unanswered
        waiting = asyncio.ensure_future(reader.read(small_model, TEXTS[0], EXPLAINED))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        os.kill(pid, signal.SIGKILL)
        return await waiting

    assert run(test) == in_process(small_model, TEXTS[0])


def test_closing_ends_the_process(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> int:
        pid = await serving(reader, small_model)
        await reader.close()
        return pid

    pid = run(test)
    assert not Path(f"/proc/{pid}").exists()


def test_a_sigterm_to_the_group_leaves_the_process_to_the_daemon(small_model: UrgencyModel) -> None:
    """systemd signals every process of the service; the daemon ends the model's once it has drained."""
    async def test(reader: Reader, metrics: Metrics) -> Reading:
        os.kill(await serving(reader, small_model), signal.SIGTERM)
        await asyncio.sleep(0.2)
        assert reader.holds(small_model)
        return await reader.read(small_model, TEXTS[0], EXPLAINED)

    assert run(test) == in_process(small_model, TEXTS[0])


def test_the_shipped_rules_judge_a_reading_made_beforehand_as_they_judge_the_model_asked_then(shipped_model) -> None:
    ruleset = triage_load.ruleset(configuration.load(None).triage)
    mails = corpus.load([shipped("rules") / "corpus"])[::40]
    for mail in mails:
        subject, _, body = mail.document.partition("\n")
        raw = f"Subject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n".encode()
        parsed = parse(raw)
        reading = shipped_model.predict(document(parsed.subject, parsed.read_text, parsed.is_reply)).reading(
            ruleset.explained)
        asked_then = evaluate(ruleset, Context(parsed, NOW, model=shipped_model))
        assert evaluate(ruleset, Context(parsed, NOW, model=shipped_model, reading=reading)) == asked_then
