"""Ownership (担当制) and escalation: who owns a case, who handles it now, who else must see it.

- A customer keeps one customer-facing owner while that agent exists (sticky); a case keeps its
  owner.
- When the owner is away or off duty, a teammate of the same tier handles the message; the
  owner of record does not change.
- A new customer goes to the least-loaded on-duty agent of the support tier.
- A rule may escalate (``escalate = "tech"`` or ``"dev"``): the least-loaded on-duty agent of
  that tier is assigned as well, so questions follow support → technical support → developers.
Every assignment carries its reason. A pure function: the store supplies load and away flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from mailpipe.config import Agent, TriageConfig
from mailpipe.triage.hours import on_duty


@dataclass(frozen=True)
class Decision:
    owner: Agent
    handler: Agent
    escalation: Agent | None
    reasons: tuple[tuple[str, str, str], ...]  # (agent id, role, reason)

    @property
    def recipients(self) -> tuple[Agent, ...]:
        """Whose mailbox receives the message: the handler, and the escalation agent."""
        chosen = [self.handler]
        if self.escalation is not None and self.escalation != self.handler:
            chosen.append(self.escalation)
        return tuple(chosen)


class NoAgents(Exception):
    """The configuration has no agent in the support tier to give a new customer to."""


def assign(agents: Sequence[Agent], *, previous_owner: str, escalate: str | None, load: Mapping[str, int],
           away: frozenset[str], now: datetime, desk: TriageConfig) -> Decision:
    by_id = {agent.id: agent for agent in agents}

    def available(agent: Agent) -> bool:
        return agent.id not in away and on_duty(agent, now, desk)

    def least_loaded(tier: str, exclude: str = "") -> tuple[Agent | None, bool]:
        """(the least-loaded agent of a tier, whether it is on duty); config order breaks ties."""
        members = [a for a in agents if a.tier == tier and a.id != exclude]
        present = [a for a in members if available(a)]
        pool = present or members
        if not pool:
            return None, False
        return min(pool, key=lambda a: (load.get(a.id, 0), agents.index(a))), bool(present)

    reasons: list[tuple[str, str, str]] = []
    owner = by_id.get(previous_owner)
    if owner is not None:
        reasons.append((owner.id, "owner", "sticky owner of this customer"))
    else:
        chosen, present = least_loaded("support")
        if chosen is None:
            raise NoAgents("no agent of the support tier is configured")
        owner = chosen
        why = f"least loaded ({load.get(owner.id, 0)} open)" + ("" if present else ", nobody on duty")
        gone = f"previous owner {previous_owner!r} no longer exists; " if previous_owner else "new customer; "
        reasons.append((owner.id, "owner", gone + why))
    handler = owner
    if not available(owner):
        teammate, present = least_loaded(owner.tier, exclude=owner.id)
        if teammate is not None and present:
            handler = teammate
            state = "away" if owner.id in away else "off duty"
            reasons.append((teammate.id, "handler", f"owner {owner.id} is {state}; teammate of tier {owner.tier}"))
    escalation = None
    if escalate is not None:
        escalation, present = least_loaded(escalate)
        if escalation is not None:
            reasons.append((escalation.id, "escalation",
                            f"rule escalates to {escalate}; least loaded ({load.get(escalation.id, 0)} open)"
                            + ("" if present else ", nobody on duty")))
    return Decision(owner, handler, escalation, tuple(reasons))
