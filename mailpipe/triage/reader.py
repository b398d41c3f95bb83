"""The urgency model read in a process of its own, so that its CPU is the second core's.

Why: a prediction costs 0.1-0.3 ms of CPU, an eighth of what triage costs a message, and in the
daemon's process it holds the GIL that every other stage waits for. In a process of its own
the daemon only writes the text into a pipe and reads back the probabilities and the n-grams
each model rule shows (``Reading``): tens of microseconds.

The process gets every model the learner installs (pickled: our own object, sent by the
process that started it, never read from a file), says when it holds it, and reads texts in
the order sent. Until it holds the model triage asks for (starting, loading a newer one, or
started again after it died) a text is read in the daemon's process, as ``mailpipe score`` reads
it: verdicts are the same either way, only where the CPU is spent differs. A process that dies
is started again after a pause that doubles up to a minute, and the texts it had not answered
are read in the daemon's process. ``mailpipe_urgency_reader_up`` says whether it serves now,
``mailpipe_urgency_reader_starts_total`` counts its starts and
``mailpipe_urgency_reads_total{process="model"|"daemon"}`` where texts were read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
import struct
import sys
import time
from typing import IO, Any

from mailpipe.metrics import Metrics
from mailpipe.triage.model import Explained, Reading, UrgencyModel

log = logging.getLogger("mailpipe.triage")

_LENGTH = struct.Struct(">I")  # each message on the pipes: its length, then its pickle
_RESTART_FIRST, _RESTART_MAX = 1.0, 60.0
_RESTART_GOOD_RUN = 60.0  # a process that ran this long and died is a new failure, not the same again
_EXIT_WAIT = 5.0  # at shutdown: how long the process may take to see its input end


class ReaderGone(Exception):
    """The model's process ended before it answered."""


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
        self._pending: dict[int, asyncio.Future[Reading]] = {}
        self._loaded: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._restart = _RESTART_FIRST  # the pause before starting again a process that died
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The process's id while it runs (benchmarks read its CPU time)."""
        return self._pipe.pid if self._pipe is not None else None

    def holds(self, model: UrgencyModel) -> bool:
        """Whether the process runs and reads with ``model`` (else ``read`` reads in the daemon)."""
        return model is self._serving and self._pipe is not None

    def serve(self, model: UrgencyModel | None) -> None:
        """Read with ``model`` from now on: sent to the process in the background."""
        self._wanted = model
        self._metrics.urgency_reader_up.set(self.holds(model) if model is not None else 0)
        if not self._closed and model is not None and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._keep_serving(0.0), name="urgency-reader")

    async def read(self, model: UrgencyModel, text: str, explained: Explained) -> Reading:
        """``model``'s reading of ``text``, explained as ``explained`` asks (``Prediction.reading``):
        from the process if it holds that model, else (or if it dies first) read here."""
        if self.holds(model):
            assert self._pipe is not None
            key = next(self._ids)
            answer = self._pending[key] = asyncio.get_running_loop().create_future()
            try:
                self._pipe.send(("read", key, text, explained))
                reading = await answer
                self._read_there.inc()
                return reading
            except ReaderGone:
                pass
            finally:
                self._pending.pop(key, None)
        self._read_here.inc()
        return model.predict(text).reading(explained)

    async def close(self) -> None:
        """Ends the process: its input closed, it exits once it has answered what it read."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pipe is not None:
            await self._pipe.close()

    async def _keep_serving(self, delay: float) -> None:
        """Until the process holds the wanted model: start it if it is not running, send the
        model, wait for it to say it holds it; after a failure, again after ``delay``."""
        while not self._closed and self._wanted is not None and self._wanted is not self._serving:
            if delay:
                await asyncio.sleep(delay)
            model = self._wanted
            try:
                if self._pipe is None:
                    self._pipe = await self._start()
                await self._load(self._pipe, model)
                self._serving = model
                self._metrics.urgency_reader_up.set(model is self._wanted)
                delay = 0.0
            except Exception as exc:  # reading goes on in the daemon; the process is tried again
                delay = min(max(2 * delay, _RESTART_FIRST), _RESTART_MAX)
                log.warning("urgency model process failed; reading in the daemon meanwhile",
                            extra={"error": f"{type(exc).__name__}: {exc}", "retry_in": delay})

    async def _start(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        _, pipe = await loop.subprocess_exec(lambda: _Pipe(self), sys.executable, "-P", "-m", __name__,
                                             stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                             stderr=None)
        self._metrics.urgency_reader_starts.inc()
        log.info("urgency model process started", extra={"pid": pipe.pid})
        return pipe

    async def _load(self, pipe: _Pipe, model: UrgencyModel) -> None:
        key = next(self._ids)
        loaded = self._loaded[key] = asyncio.get_running_loop().create_future()
        try:
            # Tens of megabytes: pickled off the event loop.
            pipe.send_bytes(await asyncio.to_thread(_framed, ("model", key, model)))
            await loaded
        finally:
            self._loaded.pop(key, None)

    def _answered(self, message: tuple[Any, ...]) -> None:
        kind, key = message[0], message[1]
        if kind == "model":
            loaded = self._loaded.get(key)
            if loaded is not None and not loaded.done():
                loaded.set_result(None)
            return
        waiting = self._pending.get(key)
        if waiting is None or waiting.done():
            return
        if kind == "read":
            waiting.set_result(Reading(message[2], message[3]))
        else:  # "failed": the text is read here, where the same failure is the stage's to report
            waiting.set_exception(ReaderGone(message[2]))

    def _gone(self, pipe: _Pipe) -> None:
        """The process ended: what it had not answered is read here, and it starts again."""
        if pipe is not self._pipe:
            return
        self._pipe, self._serving = None, None
        self._metrics.urgency_reader_up.set(0)
        for waiting in [*self._pending.values(), *self._loaded.values()]:
            if not waiting.done():
                waiting.set_exception(ReaderGone(f"process {pipe.pid} exited with {pipe.returncode}"))
        if self._closed:
            return
        # One that dies soon after its start again and again (a text it cannot read) waits longer each time.
        lived = time.monotonic() - pipe.started
        self._restart = _RESTART_FIRST if lived > _RESTART_GOOD_RUN else min(2 * self._restart, _RESTART_MAX)
        log.warning("urgency model process exited; starting it again",
                    extra={"pid": pipe.pid, "status": pipe.returncode, "delay": self._restart})
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._keep_serving(self._restart), name="urgency-reader")


class _Pipe(asyncio.SubprocessProtocol):
    """The process's pipes: messages out on its stdin, answers in from its stdout."""

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport

    def send(self, message: tuple[Any, ...]) -> None:
        self.send_bytes(_framed(message))

    def send_bytes(self, framed: bytes) -> None:
        if self._exited.done():
            raise ReaderGone("the process has exited")
        assert self._transport is not None
        stdin = self._transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.write(framed)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._received += data
        while len(self._received) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._received)
            end = _LENGTH.size + length
            if len(self._received) < end:
                return
            message = pickle.loads(self._received[_LENGTH.size:end])  # a copy: answers are small
            del self._received[:end]
            self._reader._answered(message)

    def process_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)
        self._reader._gone(self)

    async def close(self) -> None:
        assert self._transport is not None
        stdin = self._transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), _EXIT_WAIT)
        self._transport.close()  # kills it if it has not exited


def _framed(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _received(stream: IO[bytes]) -> tuple[Any, ...] | None:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    message: tuple[Any, ...] = pickle.loads(data)
    return message


def serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    """The process's side: messages from ``inbox`` until it ends, answers to ``outbox``."""
    model: UrgencyModel | None = None
    while (message := _received(inbox)) is not None:
        kind, key = message[0], message[1]
        if kind == "model":
            model = message[2]
            answer: tuple[Any, ...] = ("model", key)
        else:
            text, explained = message[2], message[3]
            try:
                assert model is not None, "a text before any model"
                reading = model.predict(text).reading(explained)
                answer = ("read", key, reading.probabilities, reading.explained)
            except Exception as exc:  # the daemon reads it itself, and meets the failure there
                answer = ("failed", key, f"{type(exc).__name__}: {exc}")
        outbox.write(_framed(answer))
        outbox.flush()


def main() -> None:
    # The daemon ends it by closing its input, after it has drained its own work: a SIGTERM or
    # Ctrl-C sent to the whole group must not end it first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Answers go out on a copy of stdout; anything printed goes to stderr, the daemon's log.
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, outbox)


if __name__ == "__main__":
    main()
