"""systemd's notify protocol (sd_notify(3)) without systemd-python: one datagram per state
change to $NOTIFY_SOCKET. Without that variable every call does nothing, so the daemon runs
the same in a terminal, in tests and under systemd.

A notification never waits and never fails the daemon: a systemd that is not reading its socket
(its queue full) or a socket that is gone costs that one datagram and a log line, as sd_notify(3)
hands its error to a caller free to ignore it; the next state change or watchdog ping tries again.
A READY=1 that was not sent rides along with the next watchdog ping until one gets through: under
Type=notify systemd would otherwise wait for it until TimeoutStartSec and kill a daemon that serves.
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
        self._unsent_ready: tuple[str, ...] = ()  # a READY=1 (with its STATUS) still owed to systemd

    def notify(self, *states: str) -> bool:
        """True once the datagram is on its way (or there is no socket to send it to)."""
        if not self._address:
            return True
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto("\n".join(states).encode(), self._address)
        except OSError as exc:
            if str(exc) != self._failing:
                log.warning("systemd notification not sent", extra={"states": " ".join(states), "error": str(exc)})
            self._failing = str(exc)
            return False
        self._failing = ""
        return True

    def ready(self, status: str) -> None:
        states = ("READY=1", f"STATUS={status}")
        self._unsent_ready = () if self.notify(*states) else states

    def reloading(self) -> None:
        self._unsent_ready = ()  # READY=1 follows the reload
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self._unsent_ready = ()
        self.notify("STOPPING=1", "STATUS=draining")

    def watchdog(self) -> None:
        if self.notify(*self._unsent_ready, "WATCHDOG=1"):
            self._unsent_ready = ()
