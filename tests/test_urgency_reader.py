"""The urgency model read in a process of its own (mailpipe.triage.reader), and fitted in another
(mailpipe.triage.fitting)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailpipe import children
from mailpipe import config as configuration
from mailpipe.data import shipped
from mailpipe.message import parse
from mailpipe.metrics import Metrics
from mailpipe.store.sqlite import SQLiteStore
from mailpipe.triage import corpus, fitting, rules
from mailpipe.triage import load as triage_load
from mailpipe.triage import reader as reader_module
from mailpipe.triage.context import Context, document
from mailpipe.triage.fitting import fitted_apart
from mailpipe.triage.learning import Learner
from mailpipe.triage.model import Example, Gated, ModelError, Reading, UrgencyModel, train
from mailpipe.triage.reader import Reader
from mailpipe.triage.score import evaluate

from .test_urgency_model import SMALL

T = TypeVar("T")
NOW = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)
EXPLAINED = ((("critical",), 0.0), (("critical", "high"), 0.0), (("low",), 0.0))
PASSAGES = ((("critical",), (), 0.0), (("critical", "high"), (), 0.0))
TEXTS = ["顧客リストが全て消えてしまいました。", "How do I set up DKIM?", "Thanks, no reply needed.", "",
         "help\nHow do I export my list as CSV?\n\n顧客リストが全て消えてしまいました。"]


@pytest.fixture(scope="module")
def small_model() -> UrgencyModel:
    return train([Example(text, level) for level, text in SMALL], rules.LEVELS)


@pytest.fixture(scope="module")
def other_model() -> UrgencyModel:
    """Trained on the same mail with the levels turned round: it reads every text differently."""
    turned = dict(zip(rules.LEVELS, reversed(rules.LEVELS), strict=True))
    return train([Example(text, turned[level]) for level, text in SMALL], rules.LEVELS)


def in_process(model: UrgencyModel, text: str, passages: Gated = ()) -> Reading:
    return model.reading(text, EXPLAINED, passages)


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


def test_a_reading_from_the_models_process_is_the_reading_made_in_the_daemon_to_the_last_bit(
        small_model: UrgencyModel) -> None:
    """Words are numbered by Python's hash, which differs from process to process."""
    texts = [*TEXTS, *(example.document for example in corpus.load([shipped("rules") / "corpus"])[::25])]

    async def test(reader: Reader, metrics: Metrics) -> list[Reading | None]:
        await serving(reader, small_model)
        return [await reader.read(small_model, text, EXPLAINED, PASSAGES) for text in texts]

    assert run(test) == [in_process(small_model, text, PASSAGES) for text in texts]


def test_the_reading_reads_the_paragraphs_for_the_level_sets_asked_for(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> Reading | None:
        await serving(reader, small_model)
        return await reader.read(small_model, TEXTS[-1], EXPLAINED, PASSAGES)

    reading = run(test)
    assert reading is not None and set(reading.passages) == {levels for levels, _, _ in PASSAGES}
    assert reading.passages[("critical",)].text == "help\n顧客リストが全て消えてしまいました。"


def test_the_reading_explains_the_level_sets_asked_for(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> Reading | None:
        await serving(reader, small_model)
        return await reader.read(small_model, TEXTS[0], EXPLAINED)

    reading = run(test)
    assert reading is not None
    assert set(reading.explained) == {levels for levels, _ in EXPLAINED}
    assert reading.reasons(["critical"]) == small_model.predict(TEXTS[0]).reasons(["critical"])


def test_texts_are_left_to_the_daemon_until_the_process_holds_the_model(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading | None, float, float]:
        reader.serve(small_model)
        reading = await reader.read(small_model, TEXTS[0], EXPLAINED)  # before the process could start
        return reading, reads(metrics, "daemon"), reads(metrics, "model")

    assert run(test) == (None, 1, 0)


def test_texts_are_read_in_the_process_once_it_holds_the_model(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> tuple[float, float]:
        await serving(reader, small_model)
        for text in TEXTS:
            await reader.read(small_model, text, EXPLAINED)
        return reads(metrics, "daemon"), reads(metrics, "model")

    assert run(test) == (0, len(TEXTS))


def test_many_texts_at_once_each_get_their_own_reading(small_model: UrgencyModel) -> None:
    texts = [f"{TEXTS[n % len(TEXTS)]} {n}" for n in range(200)]

    async def test(reader: Reader, metrics: Metrics) -> list[Reading | None]:
        await serving(reader, small_model)
        return await asyncio.gather(*(reader.read(small_model, text, EXPLAINED) for text in texts))

    assert run(test) == [in_process(small_model, text) for text in texts]


def test_a_newer_model_is_read_with_from_the_moment_it_is_installed(small_model: UrgencyModel,
                                                                     other_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> tuple[bool, Reading | None, Reading | None]:
        await serving(reader, small_model)
        reader.serve(other_model)
        at_once = await reader.read(other_model, TEXTS[0], EXPLAINED)
        await until(lambda: reader.holds(other_model))
        return reader.holds(small_model), at_once, await reader.read(other_model, TEXTS[0], EXPLAINED)

    expected = in_process(other_model, TEXTS[0])
    assert expected != in_process(small_model, TEXTS[0])
    assert run(test) == (False, None, expected)


def test_a_process_that_dies_is_started_again_and_texts_are_left_to_the_daemon_meanwhile(
        small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading | None, Reading | None, float]:
        first = await serving(reader, small_model)
        os.kill(first, signal.SIGKILL)
        await until(lambda: not reader.holds(small_model))
        meanwhile = await reader.read(small_model, TEXTS[0], EXPLAINED)
        await until(lambda: reader.holds(small_model))
        assert reader.pid != first
        return meanwhile, await reader.read(small_model, TEXTS[0], EXPLAINED), \
            metrics.urgency_reader_starts._value.get()

    assert run(test) == (None, in_process(small_model, TEXTS[0]), 2)


def test_a_text_waiting_when_the_process_dies_is_left_to_the_daemon(small_model: UrgencyModel,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "_READ_TIMEOUT", 3600.0)  # it is the death that answers, not the clock

    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading | None, float]:
        pid = await serving(reader, small_model)
        os.kill(pid, signal.SIGSTOP)  # it reads nothing more, and then dies with the text unanswered
        waiting = asyncio.ensure_future(reader.read(small_model, TEXTS[0], EXPLAINED))
        await asyncio.sleep(0)
        os.kill(pid, signal.SIGKILL)
        return await waiting, reads(metrics, "daemon")

    assert run(test) == (None, 1)


def test_a_process_that_does_not_answer_is_killed_and_the_text_left_to_the_daemon(
        small_model: UrgencyModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "_READ_TIMEOUT", 0.5)

    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading | None, bool]:
        pid = await serving(reader, small_model)
        os.kill(pid, signal.SIGSTOP)
        reading = await reader.read(small_model, TEXTS[0], EXPLAINED)
        await until(lambda: reader.holds(small_model) and reader.pid != pid)  # a new one, once the old was killed
        return reading, Path(f"/proc/{pid}").exists()

    assert run(test) == (None, False)


@pytest.mark.parametrize("child", [
    "pass",  # exits at once
    "import sys; sys.stdout.write('hello'); sys.stdout.flush(); sys.stdin.read()",  # junk for a length
    "import sys; sys.stdout.buffer.write(bytes([0, 0, 0, 5]) + b'hello'); sys.stdout.flush(); sys.stdin.read()",
    "import sys; sys.stdout.buffer.write(bytes([0, 0, 0, 2]) + b'{}'); sys.stdout.flush(); sys.stdin.read()",
], ids=["exits-at-once", "junk-length", "not-json", "wrong-shape"])
def test_a_process_that_cannot_serve_is_started_again_and_texts_are_left_to_the_daemon(
        small_model: UrgencyModel, monkeypatch: pytest.MonkeyPatch, child: str) -> None:
    monkeypatch.setattr(reader_module, "_RESTART_FIRST", 0.05)
    monkeypatch.setattr(reader_module.children, "command", lambda entry: [sys.executable, "-c", child])

    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading | None, bool]:
        reader.serve(small_model)
        await until(lambda: metrics.urgency_reader_starts._value.get() >= 3)
        return await reader.read(small_model, TEXTS[0], EXPLAINED), reader.holds(small_model)

    assert run(test) == (None, False)


def test_switching_the_model_off_ends_the_process(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> float:
        pid = await serving(reader, small_model)
        reader.serve(None)
        await until(lambda: not Path(f"/proc/{pid}").exists())
        return metrics.urgency_reader_up._value.get()

    assert run(test) == 0


def test_closing_ends_the_process(small_model: UrgencyModel) -> None:
    async def test(reader: Reader, metrics: Metrics) -> int:
        pid = await serving(reader, small_model)
        await reader.close()
        return pid

    pid = run(test)
    assert not Path(f"/proc/{pid}").exists()


def test_a_sigterm_to_the_group_leaves_the_process_to_the_daemon(small_model: UrgencyModel) -> None:
    """systemd signals every process of the service; the daemon ends the model's once it has drained."""
    async def test(reader: Reader, metrics: Metrics) -> tuple[Reading | None, float, float]:
        os.kill(await serving(reader, small_model), signal.SIGTERM)
        reading = await reader.read(small_model, TEXTS[0], EXPLAINED)
        return reading, reads(metrics, "model"), metrics.urgency_reader_starts._value.get()

    assert run(test) == (in_process(small_model, TEXTS[0]), 1, 1)


def test_the_shipped_rules_judge_a_reading_made_beforehand_as_they_judge_the_model_asked_then(
        training_corpus: Path) -> None:
    model = train(corpus.load([training_corpus]), rules.LEVELS)
    ruleset = triage_load.ruleset(configuration.load(None).triage)
    mails = corpus.load([shipped("rules") / "corpus"])[::40]
    for mail in mails:
        subject, _, body = mail.document.partition("\n")
        raw = f"Subject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n".encode()
        parsed = parse(raw)
        reading = model.reading(document(parsed.subject, parsed.read_text, parsed.is_reply), ruleset.explained,
                                ruleset.passages)
        asked_then = evaluate(ruleset, Context(parsed, NOW, model=model))
        assert evaluate(ruleset, Context(parsed, NOW, model=model, reading=reading)) == asked_then


def test_a_model_fitted_in_a_process_of_its_own_reads_as_one_fitted_here(small_model: UrgencyModel) -> None:
    apart = asyncio.run(fitted_apart([Example(text, level) for level, text in SMALL]))
    assert apart is not None
    assert [in_process(apart, text) for text in TEXTS] == [in_process(small_model, text) for text in TEXTS]


def test_a_fit_that_fails_in_its_process_raises_a_model_error() -> None:
    with pytest.raises(ModelError, match="exited with 1"):
        asyncio.run(fitted_apart([Example("only one level", "low")] * 3))


def test_a_cancelled_fit_kills_its_process(monkeypatch: pytest.MonkeyPatch) -> None:
    started = fits_started(monkeypatch)

    async def test() -> int | None:
        fit = asyncio.create_task(fitted_apart([Example(text, level) for level, text in SMALL * 2000]))
        await until(lambda: bool(started))
        fit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fit
        return started[0].returncode

    assert asyncio.run(test()) == -signal.SIGKILL


def fits_started(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.subprocess.Process]:
    """The fits' processes, as ``fitted_apart`` starts them."""
    started: list[asyncio.subprocess.Process] = []
    start = asyncio.create_subprocess_exec

    async def recorded(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await start(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(fitting.asyncio, "create_subprocess_exec", recorded)
    return started


def test_a_fit_that_takes_too_long_is_killed_and_raises_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fitting, "_FIT_TIMEOUT", 0.01)
    with pytest.raises(ModelError, match="killed"):
        asyncio.run(fitted_apart([Example(text, level) for level, text in SMALL]))


def test_a_fit_refuses_to_run_code_upgraded_on_disk_since_the_daemon_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(children, "SOURCE", "the code the daemon started with")
    with pytest.raises(ModelError, match="restart the daemon"):
        asyncio.run(fitted_apart([Example(text, level) for level, text in SMALL]))


def test_a_fit_whose_daemon_is_gone_ends() -> None:
    """Nobody reads its answer channel any more: it ends rather than fit for nobody (and hold a restart)."""
    fit = subprocess.Popen(children.command("mailpipe.triage.fitting:fit_on"), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE)
    assert fit.stdout is not None and fit.stdin is not None
    fit.stdout.close()
    try:
        assert fit.wait(timeout=60) == 1
    finally:
        fit.kill()
        fit.stdin.close()


def test_a_daemon_stopping_cancels_its_fits_and_kills_their_processes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    started = fits_started(monkeypatch)

    async def test() -> int | None:
        learner = Learner(configuration.load(None).triage, SQLiteStore(tmp_path / "store.sqlite"), Metrics())
        fit = asyncio.create_task(learner.fit([Example(text, level) for level, text in SMALL * 2000]))
        await until(lambda: bool(started))
        learner.stop_fitting()
        with pytest.raises(asyncio.CancelledError):
            await fit
        await learner.stop()
        return started[0].returncode

    assert asyncio.run(test()) == -signal.SIGKILL


def test_a_correction_learnt_while_a_reload_installs_its_model_is_learnt_again_for_the_new_settings(
        tmp_path: Path, small_model: UrgencyModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reload's model may have been fitted before the correction reached the store."""
    trained_for: list[object] = []
    fitting_done = asyncio.Event()

    async def train(self: Learner, settings: object) -> UrgencyModel:
        trained_for.append(settings)
        await fitting_done.wait()
        fitting_done.clear()
        return small_model

    monkeypatch.setattr(Learner, "train", train)

    async def test() -> tuple[list[object], object]:
        before = configuration.load(None).triage
        learner = Learner(before, SQLiteStore(tmp_path / "store.sqlite"), Metrics())
        learner.install(small_model, before)
        learner.learn()
        await until(lambda: len(trained_for) == 1)
        reloaded = dataclasses.replace(before)
        learner.install(small_model, reloaded)
        fitting_done.set()
        await until(lambda: len(trained_for) == 2)
        fitting_done.set()
        await until(lambda: learner._task is not None and learner._task.done())
        await learner.stop()
        return [settings is reloaded for settings in trained_for], learner.settings is reloaded

    assert asyncio.run(test()) == ([False, True], True)
