"""systemd's notify protocol (sd_notify(3)) without systemd-python: one datagram per state
change to $NOTIFY_SOCKET. Without that variable every call does nothing, so the daemon runs
the same in a terminal, in tests and under systemd.

A notification never waits and never fails the daemon: a systemd that is not reading its socket
(its queue full) or a socket that is gone costs that one datagram and a log line, as sd_notify(3)
hands its error to a caller free to ignore it; the next state change or watchdog ping tries again.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("mailpipe.sdnotify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2_000_000 if enabled else None
        self._failing = ""  # the last error logged: a watchdog ping every few seconds logs it once

    def notify(self, *states: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto("\n".join(states).encode(), self._address)
        except OSError as exc:
            if str(exc) != self._failing:
                log.warning("systemd notification not sent", extra={"states": " ".join(states), "error": str(exc)})
            self._failing = str(exc)
        else:
            self._failing = ""

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=draining")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")
