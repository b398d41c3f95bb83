"""Ownership and escalation decisions (pure): sticky owners, away and off-duty agents, load."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailpipe.config import Agent, TriageConfig
from mailpipe.triage.assign import NoAgents, assign

DESK = TriageConfig("", "", "Asia/Tokyo", "09:00-18:00", ("mon", "tue", "wed", "thu", "fri"), True)
TUESDAY_NOON_JST = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
SUNDAY_NOON_JST = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
YAMADA = Agent("yamada", "山田", "yamada@example.test", "03-1", "support")
SMITH = Agent("smith", "Smith", "smith@example.test", "03-2", "support")
SATO = Agent("sato", "佐藤", "sato@example.test", "03-3", "tech")
NIGHT = Agent("night", "Night", "night@example.test", "03-4", "support", days=("sun",), hours="00:00-24:00")
ROSTER = (YAMADA, SMITH, SATO)


LEAD = Agent("lead", "Lead", "lead@example.test", "03-9", "dev", days=("sun",), hours="00:00-24:00")


def decide(previous_owner: str = "", escalate: str | None = None, load: dict[str, int] | None = None,
           away: frozenset[str] = frozenset(), now: datetime = TUESDAY_NOON_JST, roster=ROSTER, lead: str = ""):
    return assign(roster, previous_owner=previous_owner, escalate=escalate, load=load or {}, away=away, now=now,
                  desk=DESK, lead=lead)


def test_a_new_customer_goes_to_the_least_loaded_support_agent() -> None:
    decision = decide(load={"yamada": 5, "smith": 2, "sato": 0})
    assert decision.owner == SMITH and decision.handler == SMITH
    assert decision.reasons == (("smith", "owner", "new customer; least loaded (2 open)"),)


def test_a_returning_customer_keeps_their_owner_whatever_the_load() -> None:
    decision = decide(previous_owner="yamada", load={"yamada": 9, "smith": 0})
    assert decision.owner == YAMADA and decision.handler == YAMADA
    assert decision.reasons[0] == ("yamada", "owner", "sticky owner of this customer")


def test_an_away_owner_stays_owner_while_a_teammate_handles_the_mail() -> None:
    decision = decide(previous_owner="yamada", away=frozenset({"yamada"}))
    assert decision.owner == YAMADA
    assert decision.handler == SMITH
    assert decision.recipients == (SMITH,)
    assert ("smith", "handler", "owner yamada is away; teammate of tier support") in decision.reasons


def test_an_off_duty_owner_is_covered_by_an_on_duty_teammate() -> None:
    decision = decide(previous_owner="yamada", now=SUNDAY_NOON_JST, roster=(YAMADA, SMITH, NIGHT))
    assert decision.owner == YAMADA and decision.handler == NIGHT


def test_when_nobody_is_on_duty_the_owner_still_receives_the_mail() -> None:
    decision = decide(previous_owner="yamada", now=SUNDAY_NOON_JST)
    assert decision.handler == YAMADA


def test_a_new_customer_arriving_when_nobody_is_on_duty_still_gets_an_owner() -> None:
    decision = decide(now=SUNDAY_NOON_JST, load={"yamada": 1})
    assert decision.owner == SMITH
    assert decision.reasons[0][2].endswith("nobody on duty")


def test_escalation_assigns_the_tier_as_well_and_keeps_the_customer_facing_owner() -> None:
    decision = decide(previous_owner="yamada", escalate="tech")
    assert decision.owner == YAMADA
    assert decision.escalation == SATO
    assert decision.recipients == (YAMADA, SATO)
    assert decision.reasons[-1][:2] == ("sato", "escalation")


def test_escalation_to_a_tier_nobody_belongs_to_assigns_nobody_else_and_says_so() -> None:
    decision = decide(previous_owner="yamada", escalate="dev")
    assert decision.escalation is None
    assert decision.reasons[-1] == ("yamada", "fallback", "FALLBACK: rule escalates to dev but no agent is in tier"
                                    " dev and desk.lead is not set: nobody gets a copy")


def test_an_escalation_with_nobody_of_the_tier_on_duty_falls_back_to_the_lead_on_duty() -> None:
    decision = decide(previous_owner="yamada", escalate="tech", now=SUNDAY_NOON_JST, roster=(*ROSTER, LEAD),
                      lead="lead")
    assert decision.escalation == LEAD and LEAD in decision.recipients
    assert decision.reasons[-1] == ("lead", "escalation", "FALLBACK: rule escalates to tech but no agent of tier"
                                    " tech is on duty; the lead on duty")


def test_without_a_lead_on_duty_an_escalation_goes_to_the_tier_off_duty_and_says_so() -> None:
    decision = decide(previous_owner="yamada", escalate="tech", now=SUNDAY_NOON_JST)
    assert decision.escalation == SATO
    assert decision.reasons[-1][2].startswith("FALLBACK: rule escalates to tech but no agent of tier tech is on duty")


def test_an_escalation_to_an_empty_tier_goes_to_the_lead_even_off_duty() -> None:
    decision = decide(previous_owner="yamada", escalate="dev", lead="smith", now=SUNDAY_NOON_JST)
    assert decision.escalation == SMITH
    assert decision.reasons[-1][2].endswith("no agent is in tier dev; the lead, off duty")


def test_an_away_owner_with_no_teammate_on_duty_falls_back_to_the_lead_on_duty() -> None:
    decision = decide(previous_owner="yamada", away=frozenset({"yamada"}), now=SUNDAY_NOON_JST,
                      roster=(*ROSTER, LEAD), lead="lead")
    assert decision.handler == LEAD and decision.recipients == (LEAD,)
    assert decision.reasons[-1][2].startswith("FALLBACK: owner yamada is away and no teammate of tier support")


def test_an_away_owner_with_nobody_on_duty_keeps_the_mail_and_the_reason_says_so() -> None:
    decision = decide(previous_owner="yamada", away=frozenset({"yamada"}), now=SUNDAY_NOON_JST)
    assert decision.handler == YAMADA
    assert decision.reasons[-1] == ("yamada", "handler", "FALLBACK: owner yamada is away, no teammate of tier"
                                    " support and no lead on duty; stays with the owner")


def test_an_owner_who_left_the_roster_is_replaced() -> None:
    decision = decide(previous_owner="tanaka", load={"yamada": 0, "smith": 3})
    assert decision.owner == YAMADA
    assert "previous owner 'tanaka' no longer exists" in decision.reasons[0][2]


def test_a_roster_without_support_agents_cannot_take_new_customers() -> None:
    with pytest.raises(NoAgents):
        decide(roster=(SATO,))
