"""One delivery attempt of one message to the recipients of one domain, over SMTP.

Where mail goes: the configured smarthost, else the recipient domain's MX hosts in order of
preference (dnspython), else the domain's own address when it has no MX (RFC 5321 5.1); a null
MX (RFC 7505) refuses mail for good. Each host's addresses are tried in turn; a host that cannot
be reached, or answers the greeting with 4xx, passes the turn to the next. STARTTLS is used
whenever offered, without verifying the certificate (opportunistic, RFC 7435) — if that
handshake fails the host is tried once more in plaintext; to domains listed in
``tls_required_domains`` (and to a smarthost that needs a password) mail goes only over TLS
verified against the host name, and is deferred otherwise. At most ``max_per_destination``
conversations run at once per domain.

What comes back is the reply each recipient got, with the provider recognised from the MX host
and each reply classified from the catalog; what to do with them (ack, retry, DSN) is the
queue runner's business. Nothing here retries or sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from mailpipe.config import OutboundConfig
from mailpipe.outbound.classify import OTHER_PROVIDER, Catalog, Classification

log = logging.getLogger("mailpipe.outbound")

_CACHED_ANSWERS = 10_000

# Replies we make up when no server answered, in the form of the ones servers give.
NULL_MX = (556, "5.1.10 Recipient domain accepts no mail (null MX, RFC 7505)")
NO_DOMAIN = (550, "5.1.2 Recipient domain does not exist in DNS")
DNS_TROUBLE = (451, "4.4.3 Cannot look up the recipient domain's mail servers now")
TLS_MISSING = (451, "4.7.5 TLS is required for this domain but the server does not offer STARTTLS")


@dataclass(frozen=True)
class Reply:
    code: int
    text: str
    host: str = ""  # the server that said it; empty when no server was reached
    classification: Classification | None = None

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        where = f"{self.host} said " if self.host else ""
        return f"{where}{self.code} {' '.join(self.text.split())}"


@dataclass(frozen=True)
class Attempt:
    provider: str
    replies: dict[str, Reply]  # recipient -> the reply that decides its fate this time
    connected: bool  # whether any server answered at all
    tls: bool = False  # whether the conversation that decided was encrypted


@dataclass(frozen=True)
class Hop:
    name: str  # host name, for TLS verification and reply attribution
    port: int


class Transport:
    def __init__(self, settings: OutboundConfig, hostname: str, resolver: dns.asyncresolver.Resolver,
                 catalog: Catalog):
        self.settings = settings
        self.hostname = hostname
        self.catalog = catalog
        self._resolver = resolver
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._opportunistic = ssl.create_default_context()
        self._opportunistic.check_hostname = False
        self._opportunistic.verify_mode = ssl.CERT_NONE
        self._verified = ssl.create_default_context(cafile=settings.ca_file or None)

    async def send(self, mail_from: str, domain: str, recipients: Sequence[str], data: bytes) -> Attempt:
        slots = self._slots.setdefault(domain, asyncio.Semaphore(self.settings.max_per_destination))
        async with slots:
            return await self._send(mail_from, domain, recipients, data)

    async def _send(self, mail_from: str, domain: str, recipients: Sequence[str], data: bytes) -> Attempt:
        settings = self.settings
        if settings.smarthost:
            hops: list[Hop] | tuple[int, str] = [Hop(settings.smarthost, settings.smarthost_port)]
        else:
            hops = await self._route(domain)
        if isinstance(hops, tuple):
            return Attempt(self.catalog.provider(None, domain), dict.fromkeys(recipients, self._ours(*hops)),
                           connected=False)
        require_tls = domain in settings.tls_required_domains or bool(settings.smarthost_username)
        provider = self.catalog.provider(None, domain)
        last = self._ours(451, "4.4.1 No mail server of the recipient domain answered")
        for hop in hops:
            provider = self.catalog.provider(None if settings.smarthost else hop.name, domain)
            for address in await self._addresses(hop.name):
                outcome = await self._converse(hop, address, provider, mail_from, recipients, data, require_tls)
                if isinstance(outcome, Attempt):
                    return outcome
                last = outcome
        return Attempt(provider, dict.fromkeys(recipients, last), connected=bool(last.host))

    async def _route(self, domain: str) -> list[Hop] | tuple[int, str]:
        port = self.settings.remote_port
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return NO_DOMAIN
        except dns.resolver.NoAnswer:
            return [Hop(domain, port)]  # implicit MX: the domain's own address
        except dns.exception.DNSException:
            return DNS_TROUBLE
        records = sorted(answer, key=lambda r: r.preference)
        if len(records) == 1 and str(records[0].exchange) == ".":
            return NULL_MX
        return [Hop(str(r.exchange).rstrip("."), port) for r in records if str(r.exchange) != "."]

    async def _addresses(self, host: str) -> list[str]:
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [r.to_text() for r in await self._resolver.resolve(host, rdtype)]
            except dns.exception.DNSException:
                continue
        if not found and _is_address(host):
            found.append(host)
        return found

    async def _converse(self, hop: Hop, address: str, provider: str, mail_from: str, recipients: Sequence[str],
                        data: bytes, require_tls: bool) -> Attempt | Reply:
        """One SMTP conversation. Returns the attempt once a server took responsibility for
        answering, or the reason this host passes the turn to the next."""
        for use_tls in (True, False):
            client = aiosmtplib.SMTP(hostname=address, port=hop.port, local_hostname=self.hostname,
                                     timeout=self.settings.timeout, start_tls=False)
            try:
                await client.connect()
                await client.ehlo()
                if use_tls and client.supports_extension("starttls"):
                    context = self._verified if require_tls else self._opportunistic
                    try:
                        await client.starttls(server_hostname=hop.name, tls_context=context)
                    except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                        if require_tls:
                            return self._ours(451, f"4.7.5 TLS with {hop.name} failed: {exc}", hop.name)
                        log.warning("STARTTLS failed, trying without", extra={"mx": hop.name, "error": str(exc)})
                        continue
                    await client.ehlo()
                elif require_tls:
                    return self._ours(*TLS_MISSING, hop.name)
                if self.settings.smarthost_username:
                    await client.login(self.settings.smarthost_username, self.settings.smarthost_password)
                encrypted = client.get_transport_info("sslcontext") is not None
                attempt = await self._transaction(client, hop, provider, mail_from, recipients, data)
                return dataclasses.replace(attempt, tls=encrypted)
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code >= 500:  # a permanent refusal before any recipient: it applies to all
                    reply = self._reply(provider, exc.code, exc.message, hop.name)
                    return Attempt(provider, dict.fromkeys(recipients, reply), connected=True)
                return self._reply(provider, exc.code, exc.message, hop.name)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                return self._ours(451, f"4.4.1 Connection to {hop.name} [{address}] failed: {exc}")
            finally:
                client.close()
        return self._ours(451, f"4.7.5 No usable connection to {hop.name}", hop.name)

    async def _transaction(self, client: aiosmtplib.SMTP, hop: Hop, provider: str, mail_from: str,
                           recipients: Sequence[str], data: bytes) -> Attempt:
        options = ["BODY=8BITMIME"] if not data.isascii() and client.supports_extension("8bitmime") else []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        # A non-ASCII address (山田@example.jp) goes only where SMTPUTF8 is offered (RFC 6531);
        # elsewhere it is refused for good, and the agent gets a delivery status notification.
        utf8 = client.supports_extension("smtputf8")
        unsendable = self._ours(553, f"5.6.7 {hop.name} does not accept non-ASCII addresses (no SMTPUTF8)",
                                hop.name)
        if not utf8 and not mail_from.isascii():
            return Attempt(provider, dict.fromkeys(recipients, unsendable), connected=True)
        replies: dict[str, Reply] = {r: unsendable for r in recipients if not (utf8 or r.isascii())}
        sendable = [r for r in recipients if r not in replies]
        if not sendable:
            return Attempt(provider, replies, connected=True)
        encoding = "ascii"
        if not (mail_from.isascii() and all(r.isascii() for r in sendable)):
            options.append("SMTPUTF8")
            encoding = "utf-8"
        try:
            await client.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            reply = self._reply(provider, exc.code, exc.message, hop.name)
            return Attempt(provider, {**replies, **dict.fromkeys(sendable, reply)}, connected=True)
        accepted = []
        for recipient in sendable:
            try:
                answer = await client.rcpt(recipient, encoding=encoding)
                accepted.append(recipient)
                replies[recipient] = self._reply(provider, answer.code, answer.message, hop.name)
            except aiosmtplib.SMTPResponseException as exc:
                replies[recipient] = self._reply(provider, exc.code, exc.message, hop.name)
        if accepted:
            try:
                answer = await client.data(data)
                final = self._reply(provider, answer.code, answer.message, hop.name)
            except aiosmtplib.SMTPResponseException as exc:
                final = self._reply(provider, exc.code, exc.message, hop.name)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                # The server may or may not have the message: retrying risks a duplicate, the
                # usual SMTP trade (RFC 1047); losing it is worse.
                final = self._ours(451, f"4.4.2 Connection lost during DATA: {exc}", hop.name)
            replies.update(dict.fromkeys(accepted, final))
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit()
        return Attempt(provider, replies, connected=True)

    def _reply(self, provider: str, code: int, text: str, host: str) -> Reply:
        """What a provider's server said, classified from the provider's part of the catalog."""
        return Reply(code, text, host, self.catalog.classify(provider, code, text))

    def _ours(self, code: int, text: str, host: str = "") -> Reply:
        """A reply mailpipe states itself (DNS trouble, no connection, no TLS): classified by its
        status code alone, never as a provider's new ("unknown") text."""
        return Reply(code, text, host, self.catalog.classify(OTHER_PROVIDER, code, text))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolver(nameservers: Sequence[tuple[str, int]], lifetime: float = 10.0) -> dns.asyncresolver.Resolver:
    """An async resolver asking these servers (the system's when empty) that keeps answers,
    negative ones too, for their TTL: replies and acknowledgements go to the same providers'
    MX hosts all day, and each lookup costs more CPU than the cache."""
    if nameservers:
        configured = dns.asyncresolver.Resolver(configure=False)
        configured.nameservers = [host for host, _ in nameservers]
        configured.port = nameservers[0][1]
        configured.lifetime = lifetime
    else:
        configured = dns.asyncresolver.Resolver()
    configured.cache = dns.resolver.LRUCache(_CACHED_ANSWERS)
    return configured
