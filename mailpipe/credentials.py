"""Agents' submission passwords: scrypt hashes, and the failed-attempt lockout.

A hash is stored as ``$scrypt$ln=17,r=8,p=1$SALT$HASH`` (base64), the parameters OWASP
recommends (128 MiB, a few hundred milliseconds), so a stolen store is expensive to attack and
the cost can be raised later without invalidating old hashes. Verification runs in a thread and
compares in constant time; an unknown login costs as much as a known one.

Hashing runs on a ``Hasher``: its own small pool (one thread by default) with a bounded
queue, so a flood of logins costs at most one hash's CPU and memory per thread, never the
threads triage runs on; a login past the queue's bound is told to try later (``454``) at once.

``Lockout`` counts failures per client address and per login in a sliding window; once either
reaches the limit, that address or login is refused — right passwords included — until the
lockout ends. It lives in the daemon's memory: a restart forgives, which is what an operator
who restarts to let a locked-out agent in expects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_LOG_N, _R, _P = 17, 8, 1
_MAXMEM = 256 * 1024 * 1024
_DUMMY = ""


def hash_password(password: str, log_n: int = _LOG_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log_n, r=_R, p=_P, maxmem=_MAXMEM, dklen=32)
    return f"$scrypt$ln={log_n},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time; a missing or malformed hash verifies nothing but costs the same time."""
    global _DUMMY
    if not _DUMMY:
        _DUMMY = hash_password(secrets.token_hex(8))
    try:
        _, scheme, params, salt, digest = (stored or _DUMMY).split("$")
        settings = dict(item.split("=") for item in params.split(","))
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=2 ** int(settings["ln"]),
                                r=int(settings["r"]), p=int(settings["p"]), maxmem=_MAXMEM, dklen=len(expected))
    except (ValueError, KeyError):
        return False
    return scheme == "scrypt" and stored is not None and hmac.compare_digest(actual, expected)


class Busy(Exception):
    """More logins wait for a hash than the queue holds: refuse this one for now."""


class Hasher:
    """Verifies passwords on ``threads`` threads of its own, with at most ``queue`` waiting."""

    def __init__(self, threads: int = 1, queue: int = 4):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scrypt")
        self._bound = threads + queue
        self.pending = 0  # verifications running or waiting

    async def verify(self, password: str, stored: str | None) -> bool:
        """Raises ``Busy`` instead of queueing past the bound."""
        if self.pending >= self._bound:
            raise Busy(f"{self.pending} password checks already running or waiting")
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, verify_password, password, stored)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Lockout:
    def __init__(self, max_failures: int, window: float, lockout: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self._clock = clock
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)
        self._locked_until: dict[str, float] = {}
        self._next_sweep = 0.0

    @property
    def remembered(self) -> int:
        """Logins it keeps anything of: failures within the window, lockouts not yet over."""
        return len(self._failures.keys() | self._locked_until.keys())

    def locked(self, *keys: str) -> bool:
        now = self._clock()
        return any(self._locked_until.get(key, 0.0) > now for key in keys)

    def failed(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            recent = self._failures[key]
            recent.append(now)
            while recent and recent[0] <= now - self.window:
                recent.popleft()
            if len(recent) >= self.max_failures:
                self._locked_until[key] = now + self.lockout
                recent.clear()
        self._forget_stale(now)

    def _forget_stale(self, now: float) -> None:
        """Once a window at most: a guesser trying a new login name every time would otherwise
        leave a key behind for each, for as long as the daemon runs."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window
        for key in [key for key, recent in self._failures.items() if not recent or recent[-1] <= now - self.window]:
            del self._failures[key]
        for key in [key for key, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)
