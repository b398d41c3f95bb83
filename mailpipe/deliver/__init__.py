"""Hand a message to its owner's mailbox: Maildir on this machine, or SMTP/LMTP to the
company's mail server. Deliverers prepend headers and never alter the original body bytes.

A deliverer raises ``TemporaryFailure`` (retry later) or ``PermanentFailure`` (quarantine);
anything else it raises is treated by the worker as a crash of the stage.
"""

from __future__ import annotations

from typing import Protocol

from mailpipe.config import Agent
from mailpipe.spool import Message


class TemporaryFailure(Exception):
    """The next hop may accept later: a 4xx, a refused connection, a full disk."""


class PermanentFailure(Exception):
    """The next hop refused for good: a 5xx."""


class Deliverer(Protocol):
    method: str

    async def deliver(self, message: Message, owner: Agent, headers: bytes) -> None:
        """Hand ``headers`` + the spooled bytes to ``owner``'s mailbox; idempotent per queue id."""
