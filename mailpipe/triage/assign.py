"""Ownership (担当制) and escalation: who owns a case, who handles it now, who else must see it.

- A customer keeps one customer-facing owner while that agent exists (sticky); a case keeps its
  owner.
- When the owner is away or off duty, a teammate of the same tier handles the message; the
  owner of record does not change.
- A new customer goes to the least-loaded on-duty agent of the support tier.
- A rule may escalate (``escalate = "tech"`` or ``"dev"``): the least-loaded on-duty agent of
  that tier is assigned as well, so questions follow support → technical support → developers.
- Nothing falls back silently. An escalation with nobody of the tier on duty goes, in this
  order, to the desk's lead (``desk.lead``) when on duty, to the least-loaded agent of the tier
  off duty, to the lead off duty; with none of them, to nobody, and says so. An away or off-duty
  owner with no teammate on duty: the lead handles the mail when on duty, else it stays with
  the owner, and says so. Such reasons start with ``FALLBACK`` (``FALLBACK``): the header, the
  card, the log line and ``mailpipe_assignment_fallbacks_total`` all come from them.
Every assignment carries its reason. A pure function: the store supplies load and away flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


FALLBACK = "FALLBACK"


def is_fallback(reason: str) -> bool:
    return reason.startswith(FALLBACK)


def assign(agents: Sequence[Agent], *, previous_owner: str, escalate: str | None, load: Mapping[str, int],
           away: frozenset[str], now: datetime, desk: TriageConfig, lead: str = "") -> Decision:
    by_id = {agent.id: agent for agent in agents}
    the_lead = by_id.get(lead)

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
        state = "away" if owner.id in away else "off duty"
        if teammate is not None and present:
            handler = teammate
            reasons.append((teammate.id, "handler", f"owner {owner.id} is {state}; teammate of tier {owner.tier}"))
        elif the_lead is not None and the_lead != owner and available(the_lead):
            handler = the_lead
            reasons.append((the_lead.id, "handler", f"{FALLBACK}: owner {owner.id} is {state} and no teammate of"
                                                    f" tier {owner.tier} is on duty; the lead handles it"))
        else:
            reasons.append((owner.id, "handler", f"{FALLBACK}: owner {owner.id} is {state}, no teammate of tier"
                                                 f" {owner.tier} and no lead on duty; stays with the owner"))
    escalation = None
    if escalate is not None:
        escalation, reason = _escalation(escalate, least_loaded, the_lead, available, load)
        reasons.append(((escalation or owner).id, "escalation" if escalation else "fallback", reason))
    return Decision(owner, handler, escalation, tuple(reasons))


def _escalation(tier: str, least_loaded: Callable[[str], tuple[Agent | None, bool]], lead: Agent | None,
                available: Callable[[Agent], bool], load: Mapping[str, int]) -> tuple[Agent | None, str]:
    """Who gets an escalation to ``tier``, in the documented order, and why."""
    chosen, present = least_loaded(tier)
    if chosen is not None and present:
        return chosen, f"rule escalates to {tier}; least loaded ({load.get(chosen.id, 0)} open)"
    nobody = f"no agent of tier {tier} is on duty" if chosen is not None else f"no agent is in tier {tier}"
    if lead is not None and available(lead):
        return lead, f"{FALLBACK}: rule escalates to {tier} but {nobody}; the lead on duty"
    if chosen is not None:
        return chosen, f"{FALLBACK}: rule escalates to {tier} but {nobody} (nor the lead); least loaded of the tier"
    if lead is not None:
        return lead, f"{FALLBACK}: rule escalates to {tier} but {nobody}; the lead, off duty"
    return None, f"{FALLBACK}: rule escalates to {tier} but {nobody} and desk.lead is not set: nobody gets a copy"
