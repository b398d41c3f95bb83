"""``mailpipe rules test``: every rule's examples, run through the real parser and scorer.

An example is a small message (subject, body, headers, sender, customer, dmarc, the providers
with an active incident) and whether its rule must fire. Rule files carry their examples, as
SpamAssassin's regression tests do, so a changed keyword list that breaks an example fails CI
and ``check`` before a reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from typing import Any

from mailpipe.message import parse
from mailpipe.providers import provider_of
from mailpipe.store import CustomerRecord
from mailpipe.triage.context import Context
from mailpipe.triage.rules import RuleSet
from mailpipe.triage.score import evaluate


@dataclass(frozen=True)
class Failure:
    rule: str
    source: str
    index: int
    expected: bool
    example: dict[str, Any]


def example_message(example: dict[str, Any]) -> bytes:
    sender = example.get("sender", "customer@example.org")
    lines = [f"From: <{sender}>" if sender else "From: <>", "To: support@example.test",
             f"Subject: {Header(example.get('subject', ''), 'utf-8').encode()}", "Message-ID: <example@mailpipe>",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    lines += [f"{name}: {value}" for name, value in example.get("headers", {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + example.get("body", "") + "\r\n").encode()


def run(rules: RuleSet) -> tuple[int, list[Failure]]:
    checked, failures = 0, []
    for rule in rules.rules:
        for index, example in enumerate(rule.examples):
            checked += 1
            customer = CustomerRecord(0, "customer@example.org", **example["customer"]) if "customer" in example \
                else None
            context = Context(parse(example_message(example)), datetime.now(UTC), customer=customer,
                              dmarc=example.get("dmarc", "none"),
                              incidents=frozenset(provider_of(p) for p in example.get("incident", ())))
            fired = rule.name in evaluate(rules, context).rule_names
            if fired != example["expect"]:
                failures.append(Failure(rule.name, rule.source, index, example["expect"], example))
    return checked, failures
