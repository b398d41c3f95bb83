"""Shared test peers: the daemon as a real subprocess, with its sd_notify socket and mailboxes."""

from __future__ import annotations

import email
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailpipe.daemon import TRIAGING

# How long a mailpipe command or a retraining may take: each trains the urgency model first, on
# the whole shipped corpus where the test names no smaller one (``training_corpus``), which a busy
# two-core machine can stretch well past a minute.
TRAINING_SECONDS = 300
_HANDED_OUT: set[int] = set()  # ports free_port returned: never twice in one test run


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a port the kernel hands out for binding
    to 0 may be taken by some outgoing connection before the server under test binds it. Each
    pytest-xdist worker draws from its own share of the range, so two workers never hand out the
    same port to daemons that have not bound it yet."""
    try:
        lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError):
        lowest_ephemeral = 32768
    first, last = _worker_share(20000, max(20001, lowest_ephemeral - 1))
    for _ in range(200):
        port = random.randint(first, last)
        if port in _HANDED_OUT:  # free still, but promised to a daemon that has not bound it yet
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _worker_share(first: int, last: int) -> tuple[int, int]:
    """This worker's slice of ``first..last``: all of it without pytest-xdist."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (last - first + 1) // max(1, workers)
    return first + worker * size, first + (worker + 1) * size - 1


def toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML writing for test configs: scalars, arrays, tables, arrays of tables."""
    lines, tables = [], []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            tables.append(f"[{name}]\n" + toml(value, name))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            tables.extend(f"[[{name}]]\n" + toml(item, name) for item in value)
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n" + "\n".join(tables)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class Daemon:
    """A running ``mailpipe serve`` and what a test needs to talk to it."""

    directory: Path
    settings: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    notifications: list[str] = field(default_factory=list)
    seen: int = 0

    @property
    def config_path(self) -> Path:
        return self.directory / "mailpipe.toml"

    @property
    def port(self) -> int:
        return int(self.settings["inbound"]["listen"].rsplit(":", 1)[1])

    @property
    def submission_port(self) -> int:
        return int(self.settings["submission"]["listen"].rsplit(":", 1)[1])

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings['metrics']['listen']}"

    @property
    def state(self) -> Path:
        return Path(self.settings["state_directory"])

    @property
    def log_path(self) -> Path:
        return self.directory / "daemon.log"

    def write_config(self, settings: dict[str, Any] | None = None) -> None:
        if settings is not None:
            self.settings = settings
        self.config_path.write_text(toml(self.settings), "utf-8")

    def start(self, *, wait: bool = True, env: dict[str, str] | None = None) -> Daemon:
        self.write_config()
        if self.notify is None:
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(str(self.directory / "notify.sock"))
            self.notify.settimeout(0.1)
        environ = {**os.environ, "NOTIFY_SOCKET": str(self.directory / "notify.sock"), "PYTHONUNBUFFERED": "1",
                   **(env or {})}
        environ.pop("STATE_DIRECTORY", None)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailpipe", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=log, env=environ, cwd=self.directory)
        if wait:
            self.wait_for("READY=1")
            self.wait_for(lambda state: state.endswith(TRIAGING))  # the urgency model is fitted after READY
        return self

    def read_notifications(self) -> list[str]:
        assert self.notify is not None
        while True:
            try:
                self.notifications.extend(self.notify.recv(4096).decode().split("\n"))
            except (TimeoutError, BlockingIOError):
                return self.notifications

    def wait_for(self, state: str | Callable[[str], bool], timeout: float = TRAINING_SECONDS) -> None:
        """Waits for ``state`` (or one that passes it) among the notifications not yet waited
        for. Generous: a daemon with the urgency model fits it before it triages, seconds of CPU
        that a busy machine stretches."""
        wanted = state if callable(state) else state.__eq__
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            unseen = self.read_notifications()[self.seen:]
            found = [i for i, seen in enumerate(unseen) if wanted(seen)]
            if found:
                self.seen += found[0] + 1
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log()}")
        raise AssertionError(f"no {state} within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def stop(self, timeout: float = 40.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def give_passwords(self, password: str, agents: tuple[str, ...] = ("yamada", "smith")) -> None:
        """Submission passwords for agents, written into the store before the daemon starts."""
        from mailpipe.credentials import hash_password
        from mailpipe.store.sqlite import SQLiteStore

        store = SQLiteStore(self.state / "store.sqlite")
        for agent in agents:
            store.set_password(agent, hash_password(password), time.time())
        store.close()

    def mailbox(self, agent: str) -> Path:
        return self.state / "mailboxes" / agent

    def delivered(self, timeout: float = 10.0, expect: int = 1, cards: bool = False) -> list[email.message.Message]:
        """Messages in all agents' Maildirs (the customers' own, or with ``cards`` mailpipe's triage
        cards), waiting until at least ``expect`` are there."""
        deadline = time.monotonic() + timeout
        while True:
            files = sorted(self.state.glob("mailboxes/*/new/*")) + sorted(self.state.glob("mailboxes/*/cur/*"))
            found = [m for m in (mutt_view(path) for path in files)
                     if ("triage@" in (m["Message-ID"] or "")) == cards]
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def mutt_view(path: Path) -> email.message.Message:
    """A Maildir file as a mail client reads it: lines end in LF, or every line shows ``^M``."""
    data = path.read_bytes()
    assert b"\r\n" not in data, f"{path} has CRLF line endings: a mail client shows ^M"
    return email.message_from_bytes(data)


def base_settings(directory: Path, nameserver: str) -> dict[str, Any]:
    return {
        "state_directory": str(directory / "state"),
        "log_level": "info",
        "shutdown_timeout": "10s",
        "inbound": {"listen": f"127.0.0.1:{free_port()}", "hostname": "mx.example.test",
                    "addresses": ["support@example.test", "help@example.test"]},
        "spool": {"retry_initial": "1s", "retry_max": "2s"},
        "submission": {"listen": f"127.0.0.1:{free_port()}"},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "auth": {"nameservers": [nameserver]},
        # Training the urgency model costs seconds of CPU at every start: the tests that are
        # about urgency switch it on; the rest triage by the keyword rules alone.
        "triage": {"model": False},
        "agents": [
            {"id": "yamada", "name": "山田 太郎", "address": "yamada@example.test", "phone": "03-1234-5678"},
            {"id": "smith", "name": "Alex Smith", "address": "smith@example.test", "phone": "03-1234-5679"},
        ],
    }


@pytest.fixture(scope="session")
def dns_server() -> Iterator[Any]:
    """unbound serving the test zones; every daemon in the tests resolves through it."""
    from tests.dns_peer import Unbound, zones_for_tests

    server = Unbound(zones_for_tests())
    yield server
    server.stop()


@pytest.fixture
def make_daemon(tmp_path: Path, dns_server: Any) -> Iterator[Any]:
    started: list[Daemon] = []

    def make(overrides: dict[str, Any] | None = None, *, start: bool = True, name: str = "d") -> Daemon:
        directory = tmp_path / name
        directory.mkdir()
        daemon = Daemon(directory, merge(base_settings(directory, dns_server.address), overrides or {}))
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()
        if daemon.notify is not None:
            daemon.notify.close()


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    return make_daemon()


@pytest.fixture(scope="session")
def shipped_model():
    """The urgency model trained on the whole shipped corpus, once per worker: the tests that hold
    its verdicts to floors need it, and a training takes 30-70 s of one core."""
    from mailpipe.data import shipped
    from mailpipe.triage import corpus, model, rules

    return model.train(corpus.load([shipped("rules") / "corpus"]), rules.LEVELS)


# The shipped corpus files that a daemon or a command under test learns from when the test needs
# *a* model, not the shipped one's verdicts: about 530 mails at all four levels, Japanese and
# English, fitted in 2 s where the whole corpus takes 30-70 s at every start.
TRAINING_FILES = ("seed-labelled.toml", "a-delivery.toml", "b-platform.toml", "c-account.toml")


@pytest.fixture(scope="session")
def training_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus directory of ``TRAINING_FILES``, for ``triage.corpus_directory``."""
    from mailpipe.data import shipped

    directory = tmp_path_factory.mktemp("corpus")
    for name in TRAINING_FILES:
        (directory / name).write_bytes((shipped("rules") / "corpus" / name).read_bytes())
    return directory


@pytest.fixture
def with_model(training_corpus: Path) -> dict[str, Any]:
    """Settings that switch the urgency model on, trained on ``training_corpus`` alone."""
    return {"triage": {"model": True, "corpus_directory": str(training_corpus), "corpus_overrides": ""}}


@pytest.fixture
def training_corpus_keys(training_corpus: Path) -> str:
    """``with_model``'s corpus keys as the lines of a config file's ``[triage]`` table, for the
    tests that run a ``mailpipe`` command with ``--config``."""
    return f'corpus_directory = "{training_corpus}"\ncorpus_overrides = ""\n'
