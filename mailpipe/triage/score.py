"""Scoring: which rules fire on a context, their points, the total and the level.

Plain rules are evaluated first, then composites in dependency order over the names that
fired. The verdict lists every hit with what it matched, the way ``rspamc`` explains a
message, and the highest escalation any fired rule asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailpipe.triage.context import Context
from mailpipe.triage.rules import RuleSet

_ESCALATION_ORDER = {"tech": 1, "dev": 2}


@dataclass(frozen=True)
class Hit:
    name: str
    score: float
    description: str
    matched: str


@dataclass(frozen=True)
class Verdict:
    score: float
    level: str
    hits: tuple[Hit, ...]
    escalate: str | None

    @property
    def rule_names(self) -> tuple[str, ...]:
        return tuple(hit.name for hit in self.hits)

    def summary(self) -> str:
        """``NAME(score)`` for each hit, as in a SpamAssassin/Rspamd result line."""
        return ", ".join(f"{hit.name}({hit.score:g})" for hit in self.hits)


def evaluate(rules: RuleSet, context: Context) -> Verdict:
    hits: list[Hit] = []
    escalate: str | None = None
    for rule in rules.plain:
        matched = []
        for condition in rule.conditions:
            found = condition(context)
            if found is None:
                break
            matched.append(found)
        else:
            hits.append(Hit(rule.name, rule.score, rule.description, " / ".join(matched)))
            escalate = _higher(escalate, rule.escalate)
    fired = {hit.name for hit in hits}
    for rule in rules.composites:
        assert rule.expression is not None
        if rule.expression(frozenset(fired)):
            hits.append(Hit(rule.name, rule.score, rule.description, "composite"))
            fired.add(rule.name)
            escalate = _higher(escalate, rule.escalate)
    total = round(sum(hit.score for hit in hits), 2)
    return Verdict(total, rules.level(total), tuple(hits), escalate)


def _higher(current: str | None, candidate: str | None) -> str | None:
    if candidate is None:
        return current
    if current is None or _ESCALATION_ORDER[candidate] > _ESCALATION_ORDER[current]:
        return candidate
    return current
