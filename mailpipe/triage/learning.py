"""The desk's urgency model as the daemon runs it: trained, swapped, and trained again.

It is trained at start and on reload from the corpus the config names plus every agent's
correction in the store, and again in the background after each new correction, so the desk's
own word reaches the next message within seconds. Training takes seconds of one core, in a
process of its own (``triage.fitting``; at start, while intake already accepts mail into the
spool); the running model keeps triaging meanwhile, and a broken corpus or a failed training
keeps it (a reload is refused with the problems, like broken rules). Triage reads with it in
another process of its own (``triage.reader``), which gets each model as it is installed. Reads
``[triage] model``, ``corpus_directory`` and ``corpus_overrides``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from mailpipe.config import TriageConfig
from mailpipe.metrics import Metrics
from mailpipe.triage import corpus
from mailpipe.triage.conditions import LEVELS
from mailpipe.triage.fitting import fitted, fitted_apart
from mailpipe.triage.model import Example, UrgencyModel, enough
from mailpipe.triage.reader import Reader

log = logging.getLogger("mailpipe.triage")


class Corrections(Protocol):
    def corrected(self) -> tuple[tuple[str, str, str], ...]: ...


def examples(settings: TriageConfig, store: Corrections | None) -> list[Example]:
    """The corpus files, then the desk's corrections (the latest word on each text)."""
    found = corpus.load(settings.corpus_paths)
    if store is not None:
        found += [Example(text, level, f"correction by {author}") for text, level, author in store.corrected()
                  if level in LEVELS]
    return found


def trained(settings: TriageConfig, store: Corrections | None) -> UrgencyModel | None:
    """A model from what the settings name, or None when the desk runs without one."""
    return fitted(wanted(settings, store))


def wanted(settings: TriageConfig, store: Corrections | None) -> list[Example] | None:
    """What the settings train on (a broken corpus, or one without two mails at every level,
    raises ``ModelError``), or None without a model."""
    if not settings.model:
        return None
    found = examples(settings, store)
    enough(found, LEVELS)
    return found



class Learner:
    """Holds the model triage reads (``current``) and trains its successors."""

    def __init__(self, settings: TriageConfig, store: Corrections, metrics: Metrics):
        self.settings = settings
        self.current: UrgencyModel | None = None
        self.reader = Reader(metrics)  # reads with ``current`` in a process of its own
        self._store = store
        self._metrics = metrics
        self._again = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._fitting = asyncio.Lock()  # one fit at a time: two never share the CPU that triage needs
        self._fits: set[asyncio.Future[UrgencyModel | None]] = set()
        self._stopping = False

    def install(self, model: UrgencyModel | None, settings: TriageConfig) -> None:
        self.current, self.settings = model, settings
        self.reader.serve(model)
        if model is not None:
            self._metrics.model_examples.set(model.trained_on)
            self._metrics.model_trained.set(time.time())
            log.info("urgency model trained", extra={"examples": model.trained_on})

    async def train(self, settings: TriageConfig) -> UrgencyModel | None:
        """Train for ``settings`` off the event loop; raises ``ModelError`` on a broken corpus."""
        return await self.fit(await self.read(settings))

    async def read(self, settings: TriageConfig) -> list[Example] | None:
        """The first half of ``train``, quick: the corpus read and checked (``ModelError``)."""
        return await asyncio.to_thread(wanted, settings, self._store)

    async def fit(self, found: list[Example] | None) -> UrgencyModel | None:
        """The second half of ``train``: the seconds of CPU, in a process of its own (``fitting``).
        Cancelled (its process killed) once the daemon stops: ``stop_fitting``."""
        async with self._fitting:
            fit = asyncio.ensure_future(fitted_apart(found))
            self._fits.add(fit)
            if self._stopping:
                fit.cancel()
            try:
                return await fit
            finally:
                self._fits.discard(fit)

    def learn(self) -> None:
        """A correction arrived (in a store thread): train again soon, once for any number of
        corrections meanwhile. After the daemon's loop closed there is nothing to schedule: the
        correction is in the store, and the next start trains on it."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        self._again.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._relearn(), name="relearn")

    async def _relearn(self) -> None:
        while self._again.is_set():
            self._again.clear()
            settings = self.settings
            try:
                model = await self.train(settings)
            except Exception:  # the running model keeps triaging; the next correction tries again
                log.exception("urgency model not retrained; keeping the running one")
                return
            if settings is self.settings:
                self.install(model, settings)
            else:  # a reload came meanwhile, with a model fitted before this correction perhaps: again
                self._again.set()

    def stop_fitting(self) -> None:
        """The daemon is stopping: no model fitted from now on would be used. The fits running
        or waiting (at start, for a reload, after a correction) are cancelled, their processes killed."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        for fit in self._fits:
            fit.cancel()

    async def stop(self) -> None:
        """After the last message is triaged: no more fits, and the model's process ended."""
        self.stop_fitting()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.reader.close()
