"""The urgency model fitted in a process of its own, one process per fit.

Why: a fit is 15-20 s of one core, most of it Python building n-grams under the GIL. In a
thread of the daemon it cut the rate at which the event loop got through its own work to 0.59
of idle for that long, and stalled the loop for up to half a second at a time; in a process of
its own, 0.96 of idle and 0.11 s (unpickling the model; ``bench/fitting.py``, 2026-11-30). Each
agent's correction starts a fit, so this happens during the working day.

The process reads the examples from its stdin and writes the model on its answer channel
(``mailpipe.children``), both pickled (our own objects, between our own processes: never a file),
and exits; what goes wrong goes to the daemon's log through the stderr it inherits. A fit
cancelled (the daemon stops) kills it; a daemon killed outright takes it along. The daemon
unpickles what this process writes, and this process reads agents' corrections, which quote
customers' mail: both run as the same user with the same files, so a process subverted by that
text gains nothing it did not have; a sandbox for either would have to change that first.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import sys
import threading

from mailpipe import children
from mailpipe.triage.conditions import LEVELS
from mailpipe.triage.model import Example, ModelError, UrgencyModel, train

# A fit of the shipped corpus takes 15-35 s of one core; a desk's own corpus may be larger. One
# that takes this long is stuck (or its process stopped), and must not hold reloads for good.
_FIT_TIMEOUT = 900.0


def fitted(found: list[Example] | None) -> UrgencyModel | None:
    """A model of ``found`` fitted here, or None for no examples (the desk runs without a model)."""
    return None if found is None else train(found, LEVELS)


async def fitted_apart(found: list[Example] | None) -> UrgencyModel | None:
    """``fitted`` in a process of its own. Raises ``ModelError`` if that process fails or takes
    longer than ``_FIT_TIMEOUT`` (then it is killed)."""
    if found is None:
        return None
    examples = await asyncio.to_thread(pickle.dumps, found, pickle.HIGHEST_PROTOCOL)
    process = await asyncio.create_subprocess_exec(*children.command(f"{__name__}:fit_on"),
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        model, _ = await asyncio.wait_for(process.communicate(examples), _FIT_TIMEOUT)
    except BaseException as exc:  # cancelled (nobody waits for this model any more) or too slow
        process.kill()
        await asyncio.shield(process.wait())
        if isinstance(exc, TimeoutError):
            raise ModelError([f"fitting the urgency model took over {_FIT_TIMEOUT:.0f} s: its process was killed"]
                             ) from None
        raise
    if process.returncode == children.UPGRADED:
        raise ModelError(["fitting the urgency model: mailpipe was upgraded on disk since the daemon started;"
                          " restart the daemon"])
    if process.returncode != 0:
        raise ModelError([f"fitting the urgency model failed: its process exited with {process.returncode}"
                          " (the log has its error)"])
    try:
        fitted_model: UrgencyModel = await asyncio.to_thread(pickle.loads, model)
    except Exception as exc:
        raise ModelError([f"fitting the urgency model: its answer cannot be read: {exc}"]) from exc
    return fitted_model


def fit_on(answers: int) -> None:
    """The process's entry (``mailpipe.children``): examples from stdin, the model to ``answers``.
    The daemon kills it if it must; a daemon that is gone leaves nobody to read the model: it
    ends then (``_orphaned``)."""
    threading.Thread(target=_orphaned, args=(answers,), daemon=True).start()
    found = pickle.load(sys.stdin.buffer)
    with os.fdopen(answers, "wb") as out:
        pickle.dump(fitted(found), out, pickle.HIGHEST_PROTOCOL)


def _orphaned(answers: int) -> None:
    """Ends the process once nobody reads ``answers`` (the daemon died: a pipe's writing end then
    reports an error), so that a restart by systemd does not wait for a fit nobody wants."""
    poller = select.poll()
    poller.register(answers, 0)  # errors and hang-ups are reported whatever is asked for
    poller.poll()
    os._exit(1)
