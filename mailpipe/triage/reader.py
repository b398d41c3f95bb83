"""The urgency model read in a process of its own, so that its CPU is the second core's.

Why: a prediction costs 0.1-0.3 ms of CPU, an eighth of what triage costs a message, and in the
daemon's process it holds the GIL that every other stage waits for. In a process of its own
the daemon only writes the text into a pipe and reads back the probabilities, the n-grams
each model rule may show and the paragraph each passage rule reads (``Reading``): tens of
microseconds.

The process gets every model the learner installs (pickled: our own object, sent by the process
that started it, never read from a file), says when it holds it, and reads texts in the order
sent; it answers in JSON on a channel of its own (``mailpipe.children``), so the daemon never
unpickles what a process that reads customers' mail wrote. Whenever it cannot answer, ``read``
says so (None) and the ``score`` stage reads the text in the daemon, in its store thread, as
``mailpipe score`` does: verdicts are the same either way, only where the CPU is spent differs.
That is while it starts or loads a newer model, after it died (it is started again after a
pause that doubles while it keeps dying soon after a start), and when it does not answer within
``_READ_TIMEOUT`` (it is killed: a stopped or stuck process must delay mail, never hold it).
``mailpipe_urgency_reader_up`` says whether it serves now, ``mailpipe_urgency_reader_starts_total``
counts its starts and ``mailpipe_urgency_reads_total{process="model"|"daemon"}`` where texts were
read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import pickle
import struct
import sys
import time
from typing import IO, Any

from mailpipe import children
from mailpipe.metrics import Metrics
from mailpipe.triage.model import Explained, Gated, Passage, Reading, UrgencyModel

log = logging.getLogger("mailpipe.triage")

# Each message on the pipes: its length, then (to the process) a kind byte and a pickle, or
# (back) JSON. A model is sent as M, its key, then the model; anything else as P and a pickle.
_LENGTH = struct.Struct(">I")
_KEY = struct.Struct(">Q")
_MAX_ANSWER = 1 << 20  # an answer is a few hundred bytes: a longer one is a broken process
_READ_TIMEOUT = 5.0  # a prediction takes a millisecond; a process this late is stopped or stuck
_LOAD_TIMEOUT = 120.0  # unpickling a model and building its tables takes a second or two
_RESTART_FIRST, _RESTART_MAX = 1.0, 60.0
_RESTART_GOOD_RUN = 60.0  # a process that ran this long and died is a new failure, not the same again
_EXIT_WAIT = 5.0  # at shutdown: how long the process may take to see its input end


class ReaderGone(Exception):
    """The model's process ended (or was ended) before it answered."""


class Reader:
    """Reads texts with the model in its own process (``read``), which ``serve`` keeps holding
    the model triage runs now."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._read_there = metrics.urgency_reads.labels("model")
        self._read_here = metrics.urgency_reads.labels("daemon")
        self._pipe: _Pipe | None = None
        self._wanted: UrgencyModel | None = None  # the model the process should hold
        self._serving: UrgencyModel | None = None  # the model it holds and answers with
        self._pickled: tuple[UrgencyModel, bytes] | None = None  # the last model sent, framed
        # What each process was asked and has not answered yet, by key: a read, or taking a model.
        self._pending: dict[int, tuple[_Pipe, asyncio.Future[Reading]]] = {}
        self._loaded: dict[int, tuple[_Pipe, asyncio.Future[None]]] = {}
        self._retired: set[_Pipe] = set()  # told to end (the model switched off), not ended yet
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._restart = _RESTART_FIRST  # the pause before starting again a process that died
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The process's id while it runs (benchmarks read its CPU time)."""
        return self._pipe.pid if self._pipe is not None else None

    def holds(self, model: UrgencyModel) -> bool:
        """Whether the process runs and reads with ``model`` (else ``read`` answers None)."""
        return model is self._serving and self._pipe is not None and not self._pipe.exited

    def serve(self, model: UrgencyModel | None) -> None:
        """Read with ``model`` from now on: sent to the process in the background. None (the
        desk switched the model off) ends the process."""
        self._wanted = model
        self._show()
        if model is None:
            self._pickled = None
            if self._pipe is not None:
                self._pipe.end_input()  # it exits once it has answered what it read
                self._retired.add(self._pipe)
                self._pipe, self._serving = None, None
            return
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._keep_serving(0.0), name="urgency-reader")

    async def read(self, model: UrgencyModel, text: str, explained: Explained, passages: Gated = ()) -> Reading | None:
        """``model``'s reading of ``text``, explained as ``explained`` asks (``Prediction.reading``),
        with its paragraphs read for the level sets of ``passages`` whose gate it passes, from the
        process; None if it does not hold that model or does not answer: then the text is the
        daemon's to read."""
        pipe = self._pipe
        if not self.holds(model) or pipe is None:
            self._read_here.inc()
            return None
        key = next(self._ids)
        answer: asyncio.Future[Reading] = asyncio.get_running_loop().create_future()
        self._pending[key] = pipe, answer
        try:
            pipe.send((key, text, explained, passages))
            reading = await asyncio.wait_for(answer, _READ_TIMEOUT)
        except ReaderGone:
            self._read_here.inc()
            return None
        except TimeoutError:
            log.warning("urgency model process did not answer: killing it", extra={"pid": pipe.pid,
                                                                                   "waited": _READ_TIMEOUT})
            pipe.kill()
            self._read_here.inc()
            return None
        finally:
            self._pending.pop(key, None)
        self._read_there.inc()
        return reading

    async def close(self) -> None:
        """Ends the process: its input closed, it exits once it has answered what it read."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for pipe in [*self._retired, *([self._pipe] if self._pipe is not None else [])]:
            await pipe.close()

    def _show(self) -> None:
        self._metrics.urgency_reader_up.set(self._wanted is not None and self.holds(self._wanted))

    async def _keep_serving(self, delay: float) -> None:
        """Until the process holds the wanted model: start it if it is not running, send the
        model, wait for it to say it holds it; after a failure, again after ``delay``."""
        while not self._closed and self._wanted is not None and not self.holds(self._wanted):
            if delay:
                await asyncio.sleep(delay)
            model = self._wanted
            if model is None:
                return
            try:
                if self._pipe is None or self._pipe.exited:
                    self._pipe = await self._start()
                pipe = self._pipe
                await self._load(pipe, model)
                if pipe is self._pipe and not pipe.exited:  # else it died after saying so: again
                    self._serving = model
                    delay = 0.0
            except Exception as exc:  # the daemon reads meanwhile; the process is tried again
                delay = min(max(2 * delay, _RESTART_FIRST), _RESTART_MAX)
                if self._pipe is not None and not self._pipe.exited:
                    self._pipe.kill()  # it could not take the model: a new one will
                log.warning("urgency model process failed; reading in the daemon meanwhile",
                            extra={"error": f"{type(exc).__name__}: {exc}", "retry_in": delay})
            finally:
                self._show()

    async def _start(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        _, pipe = await loop.subprocess_exec(lambda: _Pipe(self), *children.command(f"{__name__}:serve_on"),
                                             stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                             stderr=None)
        self._metrics.urgency_reader_starts.inc()
        if pipe.exited:
            raise ReaderGone(f"process {pipe.pid} exited at once, with {pipe.returncode}")
        log.info("urgency model process started", extra={"pid": pipe.pid})
        return pipe

    async def _load(self, pipe: _Pipe, model: UrgencyModel) -> None:
        if self._pickled is None or self._pickled[0] is not model:
            # Tens of megabytes: pickled off the event loop, once for all the processes that need it.
            self._pickled = model, await asyncio.to_thread(pickle.dumps, model, pickle.HIGHEST_PROTOCOL)
        key = next(self._ids)
        loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loaded[key] = pipe, loaded
        try:
            pipe.send_bytes(_LENGTH.pack(1 + _KEY.size + len(self._pickled[1])) + b"M" + _KEY.pack(key),
                            self._pickled[1])
            await asyncio.wait_for(loaded, _LOAD_TIMEOUT)
        finally:
            self._loaded.pop(key, None)

    def _answered(self, pipe: _Pipe, message: list[Any]) -> None:
        """Raises on an answer of the wrong shape (``_Pipe`` then ends the process)."""
        kind, key = message[0], message[1]
        if kind == "model":
            load = self._loaded.get(key)
            if load is not None and load[0] is pipe and not load[1].done():
                load[1].set_result(None)
            return
        read = self._pending.get(key)
        if read is None or read[0] is not pipe or read[1].done():
            return
        if kind == "read":
            read[1].set_result(Reading(dict(message[2]), {tuple(levels): list(reasons)
                                                          for levels, reasons in message[3]},
                                       {tuple(levels): Passage(float(probability), str(text))
                                        for levels, probability, text in message[4]}))
        elif kind == "failed":  # the text is the daemon's to read, where the same failure is the stage's to report
            read[1].set_exception(ReaderGone(str(message[2])))
        else:
            raise ValueError(f"an answer of an unknown kind: {kind!r}")

    def _gone(self, pipe: _Pipe) -> None:
        """A process ended: what it had not answered is the daemon's to read, and it starts again."""
        self._retired.discard(pipe)
        for asked, waiting in [*self._pending.values(), *self._loaded.values()]:
            if asked is pipe and not waiting.done():
                waiting.set_exception(ReaderGone(f"process {pipe.pid} exited with {pipe.returncode}"))
        if pipe is not self._pipe:
            return
        self._pipe, self._serving = None, None
        self._show()
        if self._closed or self._wanted is None:
            return
        # One that dies soon after its start again and again (a text it cannot read) waits longer each time.
        if time.monotonic() - pipe.started > _RESTART_GOOD_RUN:
            self._restart = _RESTART_FIRST
        delay, self._restart = self._restart, min(2 * self._restart, _RESTART_MAX)
        log.warning("urgency model process exited; starting it again",
                    extra={"pid": pipe.pid, "status": pipe.returncode, "delay": delay})
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._keep_serving(delay), name="urgency-reader")


class _Pipe(asyncio.SubprocessProtocol):
    """The process's pipes: messages out on its stdin, answers in from its answer channel."""

    def __init__(self, reader: Reader):
        self._reader = reader
        self.started = time.monotonic()
        self._received = bytearray()
        self._transport: asyncio.SubprocessTransport | None = None
        self._exited = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int:
        assert self._transport is not None
        return self._transport.get_pid()

    @property
    def returncode(self) -> int | None:
        assert self._transport is not None
        return self._transport.get_returncode()

    @property
    def exited(self) -> bool:
        return self._exited.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self.send_bytes(_LENGTH.pack(len(data) + 1) + b"P", data)

    def send_bytes(self, *parts: bytes) -> None:
        if self.exited:
            raise ReaderGone("the process has exited")
        assert self._transport is not None
        stdin = self._transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.writelines(parts)

    def kill(self) -> None:
        """Ends it now; its end comes back as ``process_exited``."""
        assert self._transport is not None
        with contextlib.suppress(ProcessLookupError):
            self._transport.kill()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._received += data
        while len(self._received) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._received)
            if length > _MAX_ANSWER:
                return self._broken(f"an answer of {length} bytes")
            end = _LENGTH.size + length
            if len(self._received) < end:
                return None
            try:
                self._reader._answered(self, json.loads(self._received[_LENGTH.size:end]))
            except (ValueError, TypeError, LookupError) as exc:
                return self._broken(f"an answer that cannot be read ({type(exc).__name__}: {exc})")
            del self._received[:end]
        return None

    def _broken(self, what: str) -> None:
        log.error("urgency model process sent %s: killing it", what, extra={"pid": self.pid})
        self._received.clear()
        self.kill()

    def process_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)
        self._reader._gone(self)
        assert self._transport is not None
        self._transport.close()  # its pipes: nothing it says now is waited for

    def end_input(self) -> None:
        assert self._transport is not None
        stdin = self._transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()

    async def close(self) -> None:
        assert self._transport is not None
        self.end_input()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), _EXIT_WAIT)
        self._transport.close()  # kills it if it has not exited


_Read = tuple[int, str, Explained, Gated]


def _received(stream: IO[bytes]) -> tuple[int, UrgencyModel] | _Read | None:
    """The next message from the daemon (a model with its key, or a text's key, text, level sets
    to explain and level sets to read its paragraphs for), or None at the end of its input."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    if data[:1] == b"M":
        (key,) = _KEY.unpack_from(data, 1)
        model: UrgencyModel = pickle.loads(memoryview(data)[1 + _KEY.size:])
        return key, model
    read: _Read = pickle.loads(memoryview(data)[1:])
    return read


def serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    """The process's side: messages from ``inbox`` until it ends, answers to ``outbox``."""
    model: UrgencyModel | None = None
    while (message := _received(inbox)) is not None:
        answer: list[Any]
        if len(message) == 2:
            key, model = message
            answer = ["model", key]
        else:
            key, text, explained, passages = message
            try:
                assert model is not None, "a text before any model"
                reading = model.reading(text, explained, passages)
                answer = ["read", key, reading.probabilities,
                          [[list(levels), reasons] for levels, reasons in reading.explained.items()],
                          [[list(levels), passage.probability, passage.text]
                           for levels, passage in reading.passages.items()]]
            except Exception as exc:  # the daemon reads it itself, and meets the failure there
                answer = ["failed", key, f"{type(exc).__name__}: {exc}"]
        data = json.dumps(answer, ensure_ascii=False).encode()
        outbox.write(_LENGTH.pack(len(data)) + data)
        outbox.flush()


def serve_on(answers: int) -> None:
    """The process's entry (``mailpipe.children``): reads stdin, answers on ``answers``. The
    daemon ends it by closing its input."""
    serve(sys.stdin.buffer, os.fdopen(answers, "wb"))
