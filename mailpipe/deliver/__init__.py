"""Hand a message to its owner's mailbox: Maildir on this machine (``maildir``), or SMTP/LMTP
to the company's mail server (``relay``). The worker passes the spooled bytes with mailpipe's
headers on top (``headers.with_headers``); deliverers never alter them. ``notice`` composes the
notes mailpipe itself files about a message (a held reply, a bounce) and wraps them, triage
cards and DSNs for delivery.

A deliverer raises ``TemporaryFailure`` (retry later) or ``PermanentFailure`` (quarantine),
defined with the other queue outcomes in ``mailpipe.errors`` and re-exported here; anything
else it raises is treated by the worker as a crash of the stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mailpipe.config import Agent
from mailpipe.errors import PartlyDeferred as PartlyDeferred
from mailpipe.errors import PermanentFailure as PermanentFailure
from mailpipe.errors import TemporaryFailure as TemporaryFailure
from mailpipe.spool import Message


class Deliverer(Protocol):
    method: str

    async def deliver(self, owner: Agent, items: Sequence[tuple[Message, bytes]]) -> None:
        """Hand each message's content (the spooled bytes with our headers) to ``owner``'s
        mailbox, in one hand-off; idempotent per queue id where the mailbox allows it."""
