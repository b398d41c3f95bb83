"""``mailpipe rules test``: every rule's examples, run through the real parser and scorer.

An example is a small message (subject, body, headers, sender, customer, dmarc, the providers
with an active incident) and whether its rule must fire. Rule files carry their examples, as
SpamAssassin's regression tests do, so a changed keyword list that breaks an example fails CI
and ``check`` before a reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailpipe.message import parse
from mailpipe.providers import provider_of
from mailpipe.store import CustomerRecord
from mailpipe.triage.context import Context
from mailpipe.triage.corpus import message
from mailpipe.triage.model import UrgencyModel
from mailpipe.triage.rules import RuleSet
from mailpipe.triage.score import evaluate


@dataclass(frozen=True)
class Failure:
    rule: str
    source: str
    index: int
    expected: bool
    example: dict[str, Any]


def run(rules: RuleSet, model: UrgencyModel | None = None) -> tuple[int, list[Failure]]:
    """Check every example; rules on the learned model need ``model`` (without it they never fire)."""
    checked, failures = 0, []
    for rule in rules.rules:
        for index, example in enumerate(rule.examples):
            checked += 1
            customer = CustomerRecord(0, "customer@example.org", **example["customer"]) if "customer" in example \
                else None
            context = Context(parse(message(example)), datetime.now(UTC), customer=customer,
                              dmarc=example.get("dmarc", "none"), model=model,
                              incidents=frozenset(provider_of(p) for p in example.get("incident", ())))
            fired = rule.name in evaluate(rules, context).rule_names
            if fired != example["expect"]:
                failures.append(Failure(rule.name, rule.source, index, example["expect"], example))
    return checked, failures
