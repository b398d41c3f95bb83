"""Real SMTP peers for tests: Postfix's smtp-sink as the company's mail server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port


class SmtpSink:
    """``smtp-sink`` writing one file per transaction; ``soft``/``hard`` name commands it refuses
    with a 4xx/5xx reply (e.g. "RCPT")."""

    def __init__(self, *, soft: str = "", hard: str = "", port: int | None = None):
        self.port = port or free_port()
        # smtp-sink drops privileges to nobody, so its dump directory must be reachable by nobody.
        self.directory = Path(tempfile.mkdtemp(prefix="mailpipe-sink-"))
        self.directory.chmod(0o777)
        args = ["smtp-sink", "-u", "nobody", "-d", f"{self.directory}/%M."]
        if soft:
            args += ["-r", soft]
        if hard:
            args += ["-f", hard]
        self.process = subprocess.Popen([*args, f"127.0.0.1:{self.port}", "64"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listening(self.port, 10, "smtp-sink")

    def messages(self, expect: int = 1, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            files = sorted(self.directory.iterdir())
            if len(files) >= expect or time.monotonic() > deadline:
                return [path.read_bytes() for path in files]
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def listening(port: int, timeout: float, what: str) -> None:
    """Returns once something accepts connections on the loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")
