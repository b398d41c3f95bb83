"""The config of the desk in the mail client: the lead, the lead's digest, the caller-ID lookup.

``DeskConfig`` (``[desk]``) names the lead (an agent id): escalations and cover fall back to
the lead when nobody of the tier or team is on duty (``triage.assign``), and the digest goes
to the lead at ``digest_times`` in the desk's time zone (``triage.timezone``), in
``digest_language``. ``lookup_token`` is the bearer token the operator's HTTP listener asks of
``GET /customers?phone=…`` (empty: the lookup is off). ``check`` holds the rules that span
keys; ``config._check`` calls it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mailpipe.config import Config

_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


@dataclass(frozen=True)
class DeskConfig:
    lead: str
    digest_times: tuple[str, ...]
    digest_language: Literal["ja", "en"]
    lookup_token: str


def check(config: Config, source: str) -> list[str]:
    desk = config.desk
    problems = []
    ids = {agent.id for agent in config.agents}
    if desk.lead and desk.lead not in ids:
        problems.append(f"{source}: desk.lead: no agent {desk.lead!r}")
    if desk.digest_times and not desk.lead:
        problems.append(f"{source}: desk.digest_times: the digest goes to desk.lead, which is not set")
    for index, moment in enumerate(desk.digest_times):
        if not _TIME.fullmatch(moment):
            problems.append(f"{source}: desk.digest_times[{index}]: {moment!r} is not HH:MM")
    if desk.lookup_token and len(desk.lookup_token) < 16:
        problems.append(f"{source}: desk.lookup_token: at least 16 characters (a guessable token lets anyone"
                        " read customers by phone number)")
    return problems


def tiers_without_agents(config: Config, tiers: tuple[str, ...]) -> list[str]:
    """Warnings for ``check-config``: tiers that rules escalate to but no agent is in."""
    present = {agent.tier for agent in config.agents}
    return [f"rules escalate to tier {tier!r} but no agent is in it: such mail falls back"
            f" to {'the lead ' + repr(config.desk.lead) if config.desk.lead else 'nobody (set desk.lead)'}"
            for tier in tiers if tier not in present]
