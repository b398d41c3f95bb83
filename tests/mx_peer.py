"""A recipient's MX for tests: a real SMTP server on loopback (aiosmtpd, with STARTTLS) that
records what it receives and answers with replies a test scripts, the way Mailman's test MTA
does. Every MX host name in the test zones resolves to 127.0.0.1, and the daemon under test
sends to this server's port (``outbound.remote_port``)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller

from tests.conftest import free_port

MX_NAMES = ("mx.customer.test", "gmail-smtp-in.l.google.com", "mta5.am0.yahoodns.net")


@dataclass(frozen=True)
class Delivery:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool


class RecordingMX:
    def __init__(self, directory: Path):
        self.port = free_port()
        self.ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*MX_NAMES).configure_cert(context)
        self.ca_file = directory / "mx-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.received: list[Delivery] = []
        self.scripted: dict[str, deque[str]] = {"MAIL": deque(), "RCPT": deque(), "DATA": deque()}
        self.always: dict[str, str] = {}
        self.answers: list[str] = []
        self.holding = False  # while True, every DATA waits: how many conversations overlap shows
        self.in_data = 0
        self.most_in_data = 0
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, tls_context=context)
        self._controller.start()

    def refuse(self, command: str, reply: str, times: int = 1) -> None:
        """The next ``times`` ``command``s get ``reply``."""
        self.scripted[command].extend([reply] * times)

    def refuse_always(self, command: str, reply: str) -> None:
        self.always[command] = reply

    def offer_smtputf8(self, offered: bool) -> None:
        """Whether EHLO offers SMTPUTF8 (RFC 6531) from the next connection on; aiosmtpd's
        controller offers it unless told otherwise, as Postfix 3 and Gmail do."""
        self._controller.SMTP_kwargs["enable_SMTPUTF8"] = offered

    def _scripted(self, command: str) -> str | None:
        with self._lock:
            if self.scripted[command]:
                return self.scripted[command].popleft()
            return self.always.get(command)

    async def handle_MAIL(self, server, session, envelope, address, options) -> str:
        refusal = self._scripted("MAIL")
        if refusal:
            return refusal
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        refusal = self._scripted("RCPT")
        if refusal:
            self.answers.append(refusal)
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        refusal = self._scripted("DATA")
        if refusal:
            self.answers.append(refusal)
            return refusal
        self.in_data += 1
        self.most_in_data = max(self.most_in_data, self.in_data)
        while self.holding:
            await asyncio.sleep(0.01)
        self.in_data -= 1
        with self._lock:
            self.received.append(Delivery(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content,
                                          session.ssl is not None))
        return "250 2.0.0 OK queued"

    def wait(self, count: int = 1, timeout: float = 20.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)

    def stop(self) -> None:
        self._controller.stop()
