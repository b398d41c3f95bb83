"""Delivery to the company's own mail server over SMTP or LMTP (Dovecot, Cyrus, Exchange).

The envelope sender stays the customer's, so the agent's server can judge and bounce as usual;
the recipient is the owner's address. stdlib smtplib runs in a thread: it speaks both SMTP and
LMTP, STARTTLS and AUTH. A crash between the server's 250 and the spool's ack delivers the
message again at restart: SMTP offers no way to ask whether a message already arrived, so this
path is at-least-once (Maildir delivery is exactly-once).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Sequence

from mailpipe.config import Agent, DeliveryConfig
from mailpipe.deliver import PermanentFailure, TemporaryFailure
from mailpipe.spool import Message


class RelayDeliverer:
    def __init__(self, settings: DeliveryConfig):
        self.method = settings.method
        self._settings = settings
        self._tls = ssl.create_default_context(cafile=settings.ca_file or None)

    async def deliver(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        await asyncio.to_thread(self._send, owner, items)

    def _send(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        """One connection, one transaction per message."""
        s = self._settings
        client_class = smtplib.LMTP if s.method == "lmtp" else smtplib.SMTP
        try:
            with client_class(s.host, s.port, timeout=s.timeout) as client:
                client.ehlo_or_helo_if_needed()
                if s.starttls:
                    client.starttls(context=self._tls)
                    client.ehlo()
                if s.username:
                    client.login(s.username, s.password)
                for message, content in items:
                    refused = client.sendmail(message.entry.envelope.mail_from, [owner.address], content)
                    for code, text in refused.values():
                        _raise_for(code, text, s)
        except smtplib.SMTPRecipientsRefused as exc:
            for code, text in exc.recipients.values():
                _raise_for(code, text, s)
        except smtplib.SMTPResponseException as exc:
            _raise_for(exc.smtp_code, exc.smtp_error, s)
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"{s.method} {s.host}:{s.port}: {exc}") from exc


def _raise_for(code: int, text: bytes | str, s: DeliveryConfig) -> None:
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    detail = f"{s.method} {s.host}:{s.port} said {code} {reply}"
    if 500 <= code < 600:
        raise PermanentFailure(detail)
    raise TemporaryFailure(detail)
