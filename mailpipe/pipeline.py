"""What happens to an inbound message between the spool and the owner's mailbox, in order.

The order lives in one table, ``inbound_stages``; each stage is a plain function of ``Work``
that returns a new ``Work`` and does no I/O, so tests call stages directly. Triage (parse,
profile, thread, score, assign) slots into this table; until then ``route`` gives each sender a
stable owner among the support tier.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailpipe.addresses import canonical
from mailpipe.config import Agent
from mailpipe.spool import Message


@dataclass(frozen=True)
class Work:
    message: Message
    owner: Agent | None = None
    fields: tuple[tuple[str, str], ...] = field(default=())


Stage = Callable[[Work], Work]


class NoOwner(Exception):
    """No agent can take the message; the daemon's config has no support agent."""


def route(agents: Sequence[Agent]) -> Stage:
    """The same sender always reaches the same support agent, so a customer has one owner."""
    support = [agent for agent in agents if agent.tier == "support"] or list(agents)

    def stage(work: Work) -> Work:
        if not support:
            raise NoOwner("no agents configured")
        sender = canonical(work.message.entry.envelope.mail_from)
        index = int.from_bytes(hashlib.sha256(sender.encode()).digest()[:8], "big") % len(support)
        return dataclasses.replace(work, owner=support[index])

    return stage


def annotate(work: Work) -> Work:
    """Internal headers for the agent's client: which queue entry and which owner."""
    assert work.owner is not None
    owner = work.owner
    return dataclasses.replace(work, fields=(
        *work.fields,
        ("Delivered-To", owner.address),
        ("X-Mailpipe-Queue-Id", work.message.id),
        ("X-Mailpipe-Owner", f"{owner.id} ({owner.name})"),
    ))


def inbound_stages(agents: Sequence[Agent]) -> tuple[tuple[str, Stage], ...]:
    return (
        ("route", route(agents)),
        ("annotate", annotate),
    )
