"""An SMTP listener on the daemon's own event loop.

aiosmtpd owns the protocol; this module adds what a production listener needs around it:
limits on concurrent and per-address connections (``421 4.7.0``), an idle timeout that says
``421`` before closing, a separate DATA timeout, enhanced status codes on every reply, a
count of every reply code, and a drain that lets in-flight transactions finish on shutdown.
Command arguments that are not UTF-8 text (invalid bytes, or a CR, LF or other control
character, quoted local parts included) are refused at EHLO, HELO, MAIL or RCPT with ``501``,
so none reaches a header we write. A client that half-closes after the final dot still gets
its reply: the message may be on disk by then, and the reply is owed.
Which recipients and messages are accepted is the handler's business, not this module's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from mailpipe.metrics import Metrics
from mailpipe.smtp import replies

log = logging.getLogger("mailpipe.smtp")


@dataclass(frozen=True)
class ListenerSettings:
    name: str
    host: str
    port: int
    hostname: str
    max_message_size: int
    max_connections: int
    max_connections_per_ip: int
    idle_timeout: float
    data_timeout: float
    tls_context: ssl.SSLContext | None
    # Submission: AUTH required before MAIL, verified by the handler's ``authenticate``;
    # without TLS only from loopback clients, and only when this is set.
    auth_required: bool = False
    plaintext_auth_on_loopback: bool = False


class ConnectionGate:
    """Counts open connections, in total and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self._per_ip: Counter[str] = Counter()

    def admit(self, ip: str, settings: ListenerSettings) -> str | None:
        """None when the connection may proceed, else the 421 reply to send before closing."""
        if self.total >= settings.max_connections:
            return replies.TOO_MANY_CONNECTIONS.format(host=settings.hostname)
        if self._per_ip[ip] >= settings.max_connections_per_ip:
            return replies.TOO_MANY_FROM_YOU.format(host=settings.hostname)
        self.total += 1
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]


class Session(SMTP):
    """One client connection."""

    # Long lines are legal in practice (unwrapped HTML); RFC 5322's 998 is a SHOULD for senders.
    line_length_limit = 65536

    def __init__(self, handler: Any, listener: Listener):
        settings = listener.settings
        super().__init__(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            hostname=settings.hostname,
            ident="mailpipe ESMTP",
            tls_context=settings.tls_context,
            timeout=settings.idle_timeout,
            auth_required=settings.auth_required,
            authenticator=_credentials if settings.auth_required else None,
        )
        self._listener = listener
        self._settings = settings
        self._admitted_ip: str | None = None
        self._in_data = False
        self._in_ehlo = False
        self._storing = False  # the final dot is in: the handler is deciding or writing the message
        self._eof_while_storing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # the same session after STARTTLS
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        metrics = self._listener.metrics
        refusal = self._listener.gate.admit(peer[0], self._settings)
        if refusal is not None or self._listener.draining:
            reply = refusal or replies.SHUTTING_DOWN.format(host=self._settings.hostname)
            metrics.connections.labels(self._settings.name, "refused").inc()
            metrics.replies.labels(self._settings.name, reply[:3]).inc()
            log.warning("connection refused", extra={"listener": self._settings.name, "peer": peer[0],
                                                     "reply": reply})
            transport.write(reply.encode() + b"\r\n")
            transport.close()
            return
        self._admitted_ip = peer[0]
        if self._settings.plaintext_auth_on_loopback and _is_loopback(peer[0]):
            self._auth_require_tls = False
        self._listener.sessions.add(self)
        metrics.connections.labels(self._settings.name, "accepted").inc()
        metrics.sessions.labels(self._settings.name).inc()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted_ip is None:
            return
        self._listener.gate.release(self._admitted_ip)
        self._listener.sessions.discard(self)
        self._listener.metrics.sessions.labels(self._settings.name).dec()
        self._admitted_ip = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._admitted_ip is None:
            return False
        if self._storing:  # the message may already be durable: answer it, then close (smtp_DATA)
            self._eof_while_storing = True
            return True
        return super().eof_received()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        self._storing = command == "DATA"
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self._storing = False

    async def smtp_HELO(self, hostname: str) -> None:
        if not readable(hostname):
            await self.push(replies.BAD_HELO.format(command="HELO"))
            return
        await super().smtp_HELO(hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not readable(arg):
            await self.push(replies.BAD_SENDER_TEXT)
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not readable(arg):
            await self.push(replies.BAD_RECIPIENT_TEXT)
            return
        await super().smtp_RCPT(arg)

    async def smtp_EHLO(self, hostname: str) -> None:
        if not readable(hostname):
            await self.push(replies.BAD_HELO.format(command="EHLO"))
            return
        # RFC 2034: EHLO's own reply lines carry no enhanced code, the final "250 HELP" included.
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def push(self, status: str | bytes) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        text = _one_line(text)
        if not self._in_ehlo:
            text = replies.enhance(text)
        self._listener.metrics.replies.labels(self._settings.name, text[:3]).inc()
        await super().push(text)

    def _timeout_cb(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(replies.TIMEOUT.format(host=self._settings.hostname).encode() + b"\r\n")
            self._listener.metrics.replies.labels(self._settings.name, "421").inc()
        super()._timeout_cb()

    # aiosmtpd asks its authenticator synchronously; a password hash costs too much CPU time
    # for the event loop, so the built-in mechanisms only collect the credentials (below) and
    # the handler verifies them in a thread.
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verified(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verified(await super().auth_LOGIN(_, args))

    async def _verified(self, collected: AuthResult) -> AuthResult:
        if not collected.success or not isinstance(collected.auth_data, LoginPassword):
            return collected
        return await self.event_handler.authenticate(self.session, collected.auth_data)

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        self._reset_timeout(self._settings.data_timeout)
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False
        if self._eof_while_storing and self.transport is not None:  # replied; the client sends no more
            self.transport.close()
            return
        if self._listener.draining:
            self.close_for_shutdown()

    def close_for_shutdown(self) -> None:
        """Says 421 and hangs up, unless a transaction is still being received or stored."""
        if self._in_data or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(replies.SHUTTING_DOWN.format(host=self._settings.hostname).encode() + b"\r\n")
        self.transport.close()


def _one_line(reply: str) -> str:
    """A reply that echoes a client's argument (``502 Could not VRFY …``) stays one line of
    UTF-8: control characters and undecodable bytes (lone surrogates) become "?"."""
    if all(" " <= ch < "\x7f" for ch in reply):
        return reply
    return "".join("?" if ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff" else ch for ch in reply)


def readable(argument: str | None) -> bool:
    """A command argument is text: valid UTF-8 (aiosmtpd keeps invalid bytes as lone surrogates)
    and no control characters (a bare CR or LF, NUL, DEL), not even inside a quoted local part."""
    if argument is None:
        return True
    return not any(ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff" for ch in argument)


def _credentials(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    """Hands the decoded credentials on to ``Session._verified``; decides nothing."""
    return AuthResult(success=True, auth_data=data)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Listener:
    def __init__(self, settings: ListenerSettings, handler: Any, metrics: Metrics):
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self.gate = ConnectionGate()
        self.sessions: set[Session] = set()
        self.draining = False
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Session(self.handler, self), self.settings.host, self.settings.port,
            reuse_address=True, backlog=1024)
        log.info("listening", extra={"listener": self.settings.name,
                                     "address": f"{self.settings.host}:{self.settings.port}",
                                     "starttls": self.settings.tls_context is not None})

    def reconfigure(self, settings: ListenerSettings) -> None:
        """New limits apply to new connections; the bound address needs a restart."""
        if (settings.host, settings.port) != (self.settings.host, self.settings.port):
            log.warning("listen address change needs a restart", extra={"listener": settings.name})
            settings = ListenerSettings(**{**settings.__dict__, "host": self.settings.host,
                                           "port": self.settings.port})
        self.settings = settings

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let transactions in DATA finish, then close what is left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close_for_shutdown()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
        log.info("listener closed", extra={"listener": self.settings.name, "cut_off": len(self.sessions)})
