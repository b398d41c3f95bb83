"""The urgency model fitted in a process of its own, one process per fit.

Why: a fit is 15-20 s of one core, most of it Python building n-grams under the GIL. In a
thread of the daemon it cut the rate at which the event loop got through its own work by two
fifths for that long, and stalled the loop for up to half a second at a time (a probe of
pure-Python work units beside a fit of the shipped corpus: 320 units/s against 550 idle, loop
lag up to 570 ms); in a process of its own, 492 units/s and 131 ms (unpickling the model). Each
agent's correction starts a fit, so this happens during the working day.

The process reads the examples from its stdin and writes the model on its answer channel
(``mailpipe.children``), both pickled (our own objects, between our own processes: never a file),
and exits; what goes wrong goes to
the daemon's log through the stderr it inherits. A fit cancelled (the daemon stops) kills it;
a daemon killed outright leaves it to finish and find nobody reading its model.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys

from mailpipe import children
from mailpipe.triage.conditions import LEVELS
from mailpipe.triage.model import Example, ModelError, UrgencyModel, train


def fitted(found: list[Example] | None) -> UrgencyModel | None:
    """A model of ``found`` fitted here, or None for no examples (the desk runs without a model)."""
    return None if found is None else train(found, LEVELS)


async def fitted_apart(found: list[Example] | None) -> UrgencyModel | None:
    """``fitted`` in a process of its own. Raises ``ModelError`` if that process fails."""
    if found is None:
        return None
    examples = await asyncio.to_thread(pickle.dumps, found, pickle.HIGHEST_PROTOCOL)
    process = await asyncio.create_subprocess_exec(*children.command(f"{__name__}:fit_on"),
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        model, _ = await process.communicate(examples)
    except BaseException:  # cancelled: nobody waits for this model any more
        process.kill()
        await asyncio.shield(process.wait())
        raise
    if process.returncode != 0:
        raise ModelError([f"fitting the urgency model failed: its process exited with {process.returncode}"
                          " (the log has its error)"])
    fitted_model: UrgencyModel = await asyncio.to_thread(pickle.loads, model)
    return fitted_model


def fit_on(answers: int) -> None:
    """The process's entry (``mailpipe.children``): examples from stdin, the model to ``answers``."""
    # A SIGTERM or Ctrl-C sent to the whole group stops the daemon, which kills this if it must.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    found = pickle.load(sys.stdin.buffer)
    with os.fdopen(answers, "wb") as out:
        pickle.dump(fitted(found), out, pickle.HIGHEST_PROTOCOL)
