"""Scoring: which rules fire on a context, their points, the total and the level.

Plain rules are evaluated first; those that fired cancel what they name (``cancels``, unless
cancelled themselves); then composites in dependency order over the names that fired and were
not cancelled. A cancelled hit stays in the list with no points and no escalation, so the card
still shows what the keyword saw and who overruled it. A counted rule with ``at_most`` caps the
level the total reaches. The verdict lists every hit with what it
matched, the way ``rspamc`` explains a message, and the highest escalation a counted hit asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailpipe.triage.conditions import LEVELS
from mailpipe.triage.context import Context
from mailpipe.triage.rules import Rule, RuleSet

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
    hits: list[tuple[Rule, str]] = []
    for rule in rules.plain:
        matched = []
        for condition in rule.conditions:
            found = condition(context)
            if found is None:
                break
            matched.append(found)
        else:
            hits.append((rule, " / ".join(matched)))
    fired = {rule.name for rule, _ in hits}
    cancelled: dict[str, str] = {}
    for rule in rules.cancellers:
        if rule.name in fired and rule.name not in cancelled:
            cancelled.update((name, rule.name) for name in rule.cancels if name not in cancelled)
    counting = fired - set(cancelled)
    for rule in rules.composites:
        assert rule.expression is not None
        if rule.expression(frozenset(counting)):
            hits.append((rule, "composite"))
            if rule.name not in cancelled:
                counting.add(rule.name)
    counted = [rule for rule, _ in hits if rule.name not in cancelled]
    escalate: str | None = None
    for rule in counted:
        escalate = _higher(escalate, rule.escalate)
    total = round(sum(rule.score for rule in counted), 2)
    level = max((rules.level(total), *(rule.at_most for rule in counted if rule.at_most)), key=LEVELS.index)
    return Verdict(total, level, tuple(_hit(rule, matched, cancelled.get(rule.name)) for rule, matched in hits),
                   escalate)


def _hit(rule: Rule, matched: str, cancelled_by: str | None) -> Hit:
    if cancelled_by is None:
        return Hit(rule.name, rule.score, rule.description, matched)
    return Hit(rule.name, 0.0, rule.description, f"{matched} (cancelled by {cancelled_by})")


def _higher(current: str | None, candidate: str | None) -> str | None:
    if candidate is None:
        return current
    if current is None or _ESCALATION_ORDER[candidate] > _ESCALATION_ORDER[current]:
        return candidate
    return current
