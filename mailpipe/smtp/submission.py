"""The submission (port 587) policy: who may send, as whom, and the durable write before 250.

Agents log in with SMTP AUTH PLAIN or LOGIN as their agent id or address; the listener offers
AUTH only over TLS (or from loopback when ``plaintext_auth_on_loopback``), and MAIL before AUTH
gets ``530 5.7.0``, so nobody relays through us unauthenticated. Failed logins are counted per
client address and per agent (its id and its address are one login); past ``max_auth_failures``
both are locked out (``454 4.7.0``). The same wrong password tried again in one session (a
client going through the mechanisms, as smtplib does) counts once. Passwords are verified on a
``credentials.Hasher`` of their own, so a login flood waits there (or gets ``454`` past its
queue) and triage keeps its threads.
An agent may send only as the desk's support addresses or as itself, in the envelope and in
the From, Sender and Reply-To headers (``553 5.7.1``), read by the same parser
that picks the DKIM signing domain (``addresses.mailboxes``). Accepted replies go to the ``submission`` queue of the
outbound spool with the agent's id; everything after the 250 (threading, stamping, signing,
sending) happens in the outbound worker.
"""

from __future__ import annotations

import asyncio
import email
import hashlib
import hmac
import logging
import secrets
import weakref
from collections.abc import Sequence

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailpipe import credentials
from mailpipe.addresses import canonical, domain_of, mailboxes, syntax_problem
from mailpipe.config import Agent
from mailpipe.deliver.headers import split
from mailpipe.desk.addresses import command_of
from mailpipe.desk.commands import USAGES
from mailpipe.metrics import Metrics
from mailpipe.queues import DESK, SUBMISSION
from mailpipe.smtp import replies
from mailpipe.smtp.inbound import InboundHandler, RecipientPolicy, content_refusal
from mailpipe.spool import Spool
from mailpipe.store import Store, StoreUnavailable

log = logging.getLogger("mailpipe.submission")
# The header fields that say who a reply is from or whom to answer: each address in them must be
# the agent's own or the desk's.
_IDENTITIES = ("From", "Sender", "Reply-To")


class SubmissionHandler(InboundHandler):
    def __init__(self, agents: Sequence[Agent], support_addresses: Sequence[str], store: Store,
                 lockout: credentials.Lockout, spool: Spool, metrics: Metrics, hostname: str, max_recipients: int):
        super().__init__(RecipientPolicy(frozenset(), frozenset(), max_recipients), spool, metrics, hostname,
                         listener=SUBMISSION.name)
        self.lockout = lockout
        self.hasher = credentials.Hasher()
        self._store = store
        self._agents = {agent.id: agent for agent in agents}
        self._logins = {**{canonical(a.address): a for a in agents}, **{a.id: a for a in agents}}
        self._support = frozenset(canonical(address) for address in support_addresses)
        self._desk_domains = frozenset(domain_of(address) for address in self._support)
        self._session_key = secrets.token_bytes(32)
        self._failed_with: weakref.WeakKeyDictionary[Session, bytes] = weakref.WeakKeyDictionary()

    def reconfigure(self, agents: Sequence[Agent], support_addresses: Sequence[str], max_recipients: int) -> None:
        self._agents = {agent.id: agent for agent in agents}
        self._logins = {**{canonical(a.address): a for a in agents}, **{a.id: a for a in agents}}
        self._support = frozenset(canonical(address) for address in support_addresses)
        self._desk_domains = frozenset(domain_of(address) for address in self._support)
        self.policy = RecipientPolicy(frozenset(), frozenset(), max_recipients)

    async def authenticate(self, session: Session, given: LoginPassword) -> AuthResult:
        login = given.login.decode("utf-8", "replace").strip()
        peer = session.peer[0] if session.peer else ""
        agent = self._logins.get(canonical(login))
        keys = (f"ip:{peer}", f"agent:{agent.id}" if agent else f"login:{canonical(login)}")
        if self.lockout.locked(*keys):
            self._metrics.submission_auth.labels("locked").inc()
            log.warning("authentication locked out", extra={"peer": peer, "login": login})
            return AuthResult(success=False, handled=False, message=replies.AUTH_LOCKED)
        try:
            stored = await asyncio.to_thread(self._store.password_hash, agent.id) if agent else None
        except StoreUnavailable:
            return AuthResult(success=False, handled=False, message=replies.AUTH_UNAVAILABLE)
        password = given.password.decode("utf-8", "replace")
        try:
            # an unknown login is as slow as a wrong password, so logins cannot be probed by timing
            right = await self.hasher.verify(password, stored) and agent is not None
        except credentials.Busy:
            self._metrics.submission_auth.labels("busy").inc()
            log.warning("authentication refused: password checks busy", extra={"peer": peer})
            return AuthResult(success=False, handled=False, message=replies.AUTH_UNAVAILABLE)
        if right and agent is not None:
            self.lockout.succeeded(*keys)
            self._metrics.submission_auth.labels("success").inc()
            log.info("authenticated", extra={"peer": peer, "agent": agent.id})
            return AuthResult(success=True, auth_data=agent.id, message=replies.AUTH_OK)
        if self._first_try(session, given):
            self.lockout.failed(*keys)
        self._metrics.submission_auth.labels("failure").inc()
        log.warning("authentication failed", extra={"peer": peer, "login": login})
        return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)

    def _first_try(self, session: Session, given: LoginPassword) -> bool:
        """Whether this session has not failed with these credentials before. Python's smtplib
        (and other clients) try the same password with each mechanism offered, PLAIN then
        LOGIN: one mistyped password is one failure toward the lockout, not two. Only a keyed
        digest of the password is kept, for as long as the session lives."""
        tried = hmac.new(self._session_key, given.login + b"\0" + given.password, hashlib.sha256).digest()
        if self._failed_with.get(session) == tried:
            return False
        self._failed_with[session] = tried
        return True

    def _agent(self, session: Session) -> Agent | None:
        return self._agents.get(session.auth_data) if session.authenticated else None

    def _may_send_as(self, agent: Agent, address: str) -> bool:
        wanted = canonical(address)
        return wanted in self._support or wanted == canonical(agent.address)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        agent = self._agent(session)
        if agent is None:  # the agent was removed from the roster since it logged in
            return "530 5.7.0 Authentication required"
        if not address:
            return replies.NULL_SENDER
        if not self._may_send_as(agent, address):
            log.warning("sender refused", extra={"agent": agent.id, "from": address})
            return replies.SENDER_NOT_OWNED.format(user=agent.id)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if syntax_problem(address):
            return replies.BAD_RECIPIENT
        command = command_of(address, self._desk_domains, USAGES)
        if command is not None and (problem := USAGES[command.name].check(command.arguments)):
            return replies.DESK_COMMAND_UNKNOWN.format(usage=problem)
        if envelope.rcpt_tos and (command is not None) != (self.queue_for(envelope) == DESK.name):
            return replies.DESK_COMMAND_ALONE
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    def refusal(self, session: Session, envelope: Envelope, data: bytes) -> str | None:
        refused = content_refusal(data)
        agent = self._agent(session)
        if refused is not None or agent is None or self.queue_for(envelope) == DESK.name:
            return refused  # a desk command leaves nothing: it may pass on a customer's message as is
        head = email.message_from_bytes(split(data)[0] + b"\r\n")
        if not head.get_all("From"):
            return replies.FROM_MISSING
        if not mailboxes(head.get_all("From")):  # "From: :;" names nobody: signed for whom?
            return replies.FROM_NOT_OWNED.format(field="From", address="(empty)")
        for name in _IDENTITIES:
            for _, address in mailboxes(head.get_all(name) or []):
                if not self._may_send_as(agent, address):
                    return replies.FROM_NOT_OWNED.format(field=name, address=address or "(empty)")
        return None

    def queue_for(self, envelope: Envelope) -> str:
        """Desk commands (``urgency+high@`` a support domain) go to the desk queue, replies on."""
        if envelope.rcpt_tos and command_of(envelope.rcpt_tos[0], self._desk_domains, USAGES) is not None:
            return DESK.name
        return SUBMISSION.name

    def submitter(self, session: Session) -> str:
        agent = self._agent(session)
        return agent.id if agent else ""
