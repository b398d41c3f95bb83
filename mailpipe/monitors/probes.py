"""Placement probes: where does our mail land at each provider — inbox, spam, or nowhere?

Every ``probe_interval`` a message with a unique token goes to each seed mailbox through the
real outbound path: into the submission queue as if the probe agent had written it, so it is
stamped, DKIM-signed, queued and sent like a reply. Every ``probe_poll`` the seeds' IMAP
mailboxes are searched (stdlib imaplib in a thread) for the tokens still outstanding: found in
the inbox or the spam folder it is placed, with its delivery time and the provider's own
Authentication-Results (how the provider judged SPF, DKIM and DMARC), then deleted; not found
within ``probe_timeout`` it is missing (refused, or silently dropped).

Logging in to a seed (OAuth 2.0 or an app password) is ``oauth.log_in``; a failed login is
counted by reason (``mailpipe_probe_login_failures_total``); probes that time out while their
mailbox cannot be read are dropped, not counted missing: an unreadable mailbox says nothing
about where the mail went.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mailpipe.config import Seed
from mailpipe.deliver import headers
from mailpipe.metrics import Metrics
from mailpipe.monitors.oauth import LoginError, TokenSource, log_in
from mailpipe.providers import provider_of
from mailpipe.queues import SUBMISSION
from mailpipe.spool import Envelope, Spool

log = logging.getLogger("mailpipe.monitors")

RESULTS = ("inbox", "spam", "missing")
_VERDICT = re.compile(r"\b(spf|dkim|dmarc)=([a-z]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Pending:
    token: str
    seed: Seed
    sent_at: float


@dataclass(frozen=True)
class Placement:
    token: str
    provider: str
    result: str  # inbox | spam | missing
    seconds: float | None
    verdicts: dict[str, str]  # the provider's Authentication-Results: spf/dkim/dmarc -> pass/fail/...


def probe_message(token: str, seed: Seed, sender: str, hostname: str, at: float) -> bytes:
    """An ordinary-looking message, so the provider's filters judge it as they judge replies."""
    fields = [("From", sender), ("To", seed.address), ("Subject", f"Delivery check {token}"),
              ("Date", format_datetime(datetime.fromtimestamp(at, UTC))),
              ("Message-ID", f"<probe-{token}@{hostname}>"), ("MIME-Version", "1.0"),
              ("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "8bit")]
    body = (f"This message checks that mail from {sender} reaches this mailbox ({token}).\r\n"
            f"このメールは配信確認のためのものです（{token}）。\r\n")
    return b"".join(headers.field(name, value) for name, value in fields) + b"\r\n" + body.encode()


def provider_verdicts(header_values: Sequence[str]) -> dict[str, str]:
    """spf/dkim/dmarc results from the topmost Authentication-Results (the provider's own)."""
    for value in header_values:
        found = {method.lower(): result.lower() for method, result in _VERDICT.findall(value)}
        if found:
            return found
    return {}


class Mailbox:
    """One seed's IMAP mailbox (blocking: call from a thread)."""

    def __init__(self, seed: Seed, tokens: TokenSource | None = None, timeout: float = 30.0):
        self.seed = seed
        self.tokens = tokens
        self.timeout = timeout

    def find(self, tokens: Sequence[str]) -> dict[str, tuple[str, dict[str, str]]]:
        """token -> (inbox|spam, the provider's verdicts) for each token found; found probes are deleted."""
        found: dict[str, tuple[str, dict[str, str]]] = {}
        with self._connect() as client:
            log_in(client, self.seed, self.tokens)
            for folder, result in ((self.seed.inbox, "inbox"), (self.seed.spam, "spam")):
                status, _ = client.select(_quote(folder))
                if status != "OK":
                    continue
                for token in tokens:
                    if token in found:
                        continue
                    status, data = client.search(None, "HEADER", "Subject", f'"{token}"')
                    numbers = data[0].split() if status == "OK" and data and data[0] else []
                    if not numbers:
                        continue
                    status, fetched = client.fetch(numbers[0], "(BODY.PEEK[HEADER.FIELDS (AUTHENTICATION-RESULTS)])")
                    raw = b"".join(part[1] for part in fetched if isinstance(part, tuple)) if status == "OK" else b""
                    values = [v for v in re.split(r"\r?\n(?=\S)", raw.decode("utf-8", "replace")) if v.strip()]
                    found[token] = (result, provider_verdicts([v.partition(":")[2] for v in values]))
                    for number in numbers:
                        client.store(number, "+FLAGS", "\\Deleted")
                client.expunge()
        return found

    def _connect(self) -> imaplib.IMAP4:
        seed = self.seed
        if seed.imap_security == "tls":
            return imaplib.IMAP4_SSL(seed.imap_host, seed.imap_port, ssl_context=ssl.create_default_context(),
                                     timeout=self.timeout)
        client = imaplib.IMAP4(seed.imap_host, seed.imap_port, timeout=self.timeout)
        if seed.imap_security == "starttls":
            client.starttls(ssl.create_default_context())
        return client


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class ProbeSettings:
    seeds: tuple[Seed, ...]
    interval: float
    timeout: float
    poll: float
    sender: str
    agent: str
    hostname: str


class Prober:
    def __init__(self, settings: ProbeSettings, spool: Spool, metrics: Metrics,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self._clock = clock
        self._pending: dict[str, Pending] = {}
        self._tokens: dict[Seed, TokenSource] = {}  # access tokens outlive one poll
        self._wake = asyncio.Event()
        self._next_send = 0.0  # when the next round of probes goes out (monotonic clock)

    def reconfigure(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self._tokens = {seed: tokens for seed, tokens in self._tokens.items() if seed in settings.seeds}
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            if self.settings.seeds and time.monotonic() >= self._next_send:
                # Before sending: a run started again after a failure does not send another round.
                self._next_send = time.monotonic() + self.settings.interval
                await self.send_all()
            if self._pending:
                await self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll)

    async def send_all(self) -> None:
        settings = self.settings
        for seed in settings.seeds:
            token = f"mp-{secrets.token_hex(8)}"
            now = self._clock()
            data = probe_message(token, seed, settings.sender, settings.hostname, now)
            envelope = Envelope(settings.sender, (seed.address,), "127.0.0.1", settings.hostname, SUBMISSION.name,
                                settings.agent)
            await self.spool.enqueue(envelope, data)
            self._pending[token] = Pending(token, seed, now)
            log.info("probe sent", extra={"provider": provider_of(seed.provider), "seed": seed.address,
                                          "token": token})

    async def check(self) -> list[Placement]:
        placements = []
        by_seed: dict[Seed, list[Pending]] = {}
        for pending in self._pending.values():
            by_seed.setdefault(pending.seed, []).append(pending)
        for seed, waiting in by_seed.items():
            provider = provider_of(seed.provider)
            readable = True
            if seed.oauth2 and seed not in self._tokens:
                self._tokens[seed] = TokenSource(seed)
            tokens = self._tokens.get(seed)
            try:
                found = await asyncio.to_thread(Mailbox(seed, tokens).find, [p.token for p in waiting])
                self.metrics.probe_login_ok.labels(provider).set(1)
            except LoginError as exc:
                self.metrics.probe_login_failures.labels(provider, exc.reason).inc()
                self.metrics.probe_login_ok.labels(provider).set(0)
                log.error("probe login failed", extra={"provider": provider, "seed": seed.address,
                                                       "reason": exc.reason, "detail": exc.detail})
                found, readable = {}, False
            except (OSError, imaplib.IMAP4.error) as exc:
                log.warning("probe mailbox unreachable", extra={"seed": seed.address, "error": str(exc)})
                found = {}
            now = self._clock()
            for pending in waiting:
                if pending.token in found:
                    result, verdicts = found[pending.token]
                    placements.append(self._placed(pending, result, now - pending.sent_at, verdicts))
                elif now - pending.sent_at > self.settings.timeout:
                    if readable:
                        placements.append(self._placed(pending, "missing", None, {}))
                    else:
                        del self._pending[pending.token]
        return placements

    def _placed(self, pending: Pending, result: str, seconds: float | None, verdicts: dict[str, str]) -> Placement:
        del self._pending[pending.token]
        provider = provider_of(pending.seed.provider)
        self.metrics.probe_placements.labels(provider, result).inc()
        for candidate in RESULTS:
            self.metrics.probe_last_placement.labels(provider, candidate).set(int(candidate == result))
        if seconds is not None:
            self.metrics.probe_delivery_seconds.labels(provider).observe(seconds)
        for method, verdict in verdicts.items():
            self.metrics.probe_auth_pass.labels(provider, method).set(int(verdict == "pass"))
        (log.info if result == "inbox" else log.error)("probe placed", extra={
            "provider": provider, "seed": pending.seed.address, "token": pending.token, "result": result,
            "seconds": round(seconds, 1) if seconds is not None else "", **verdicts})
        return Placement(pending.token, provider, result, seconds, verdicts)
