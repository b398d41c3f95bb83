"""A mailbox provider for tests, from real parts: an SMTP server on loopback (aiosmtpd) that
judges SPF, DKIM and DMARC with the same libraries receivers use (pyspf, dkimpy, through
mailpipe.auth against unbound serving the test zones), stamps its own Authentication-Results
as Gmail does, and files mail into INBOX or Junk of a real IMAP server (Dovecot) — or refuses
it with Gmail's real reply text. ``policy`` switches mid-run, as Gmail's did:

- ``"inbox"``: everything is filed in INBOX;
- ``"junk"``: mail that does not pass both SPF and DKIM (Gmail's bulk-sender rule) goes to Junk;
- ``"reject"``: such mail is refused with 550 5.7.26 (Gmail since November 2025).
"""

from __future__ import annotations

import threading
import time

from aiosmtpd.controller import Controller

from mailpipe import auth
from mailpipe.message import parse
from tests.conftest import free_port
from tests.dovecot_peer import Dovecot

GMAIL_5726 = ("550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users,\r\n"
              "550-5.7.26 and has been blocked. The sender must authenticate with at least one of SPF or DKIM.\r\n"
              "550 5.7.26 https://support.google.com/mail/answer/81126#authentication - gsmtp")


class ProviderSimulator:
    def __init__(self, dovecot: Dovecot, seeds: dict[str, str], policy: str = "inbox"):
        """``seeds``: recipient address -> Dovecot user of its mailbox."""
        self.dovecot = dovecot
        self.seeds = seeds
        self.policy = policy
        self.port = free_port()
        self.rejected_at: list[float] = []
        self.filed: list[tuple[str, str]] = []  # (folder, subject)
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    async def handle_DATA(self, server, session, envelope) -> str:
        data: bytes = envelope.original_content
        parsed = parse(data)
        verdict = auth.verify(data, envelope.mail_from, session.peer[0], session.host_name or "", parsed.sender)
        dkim = "pass" if any(result == "pass" for result, _ in verdict.dkim) else "fail"
        authenticated = verdict.spf == "pass" and dkim == "pass" and verdict.dmarc == "pass"
        if self.policy == "reject" and not authenticated:
            with self._lock:
                self.rejected_at.append(time.time())
            return GMAIL_5726
        folder = "Junk" if self.policy == "junk" and not authenticated else "INBOX"
        domain, policy = verdict.from_domain, verdict.dmarc_policy.upper() or "NONE"
        results = (f"Authentication-Results: mx.google.com;\r\n dkim={dkim} header.i=@{domain};\r\n"
                   f" spf={verdict.spf} smtp.mailfrom={envelope.mail_from};\r\n"
                   f" dmarc={verdict.dmarc} (p={policy}) header.from={domain}\r\n")
        for recipient in envelope.rcpt_tos:
            user = self.seeds.get(recipient.lower())
            if user is not None:
                self.dovecot.file(user, folder, results.encode() + data)
        with self._lock:
            self.filed.append((folder, parsed.subject))
        return "250 2.0.0 OK 1790000000 a1si123456.1 - gsmtp"

    def stop(self) -> None:
        self._controller.stop()
