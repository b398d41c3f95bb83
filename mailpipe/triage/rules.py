"""Urgency rules as data: load, validate and compile ``rules/*.toml`` plus one override layer.

A rule (in the spirit of SpamAssassin/Rspamd symbols) has an UPPER_SNAKE ``name``, a
``description``, a ``score`` (negative for newsletters, auto-replies, "not urgent") and
conditions that must all hold:

    any / subject / body = ["keyword", ...]   a keyword in subject+new text (a reply: new text only)
                                              / the subject / the new text
    regex = ["pattern", ...]                  a regular expression on subject + new text
    subject_regex = ["pattern", ...]          a regular expression on the subject alone
                                              (both as keywords see the text: NFKC, case folded)
    headers = { Auto-Submitted = "^auto-" }   every listed header matches (regex, decoded)
    sender = ["@bank\\.example$"]             the sender address matches one pattern
    customer = { vip = true, plan = ["enterprise"] }
    repeat = { within_hours = 24, at_least = 2 }      earlier contacts from this customer (up to 720 h, 100)
    open_case_hours = 48                      the customer's open case is at least this old
    dmarc = "fail"                            what Authentication-Results said of DMARC
    outside_business_hours = true
    incident = true | ["gmail", ...]          a provider the message names has an active incident
    model = { level = "critical", at_least = 0.6 }   the learned model's probability of a level
                                              (or levels = [...] together; ahead_of = [...]: and more
                                              than those levels); never when it is off
    passage = { level = "critical", at_least = 0.8 } the same of the one paragraph (read after the
                                              subject) the model reads likeliest at that level
    expression = "NOT_DELIVERED & VIP & !AUTO_REPLY"  a composite: only this condition

and optionally ``escalate = "tech"`` or ``"dev"``, ``examples`` that ``mailpipe rules test``
checks, and ``cancels = ["NAME", ...]``: when the rule fires, the points and escalation of those
rules do not count (they are still listed, as cancelled), the way an Rspamd composite removes a
symbol's weight; a rule that knows better than a keyword ("the model reads a how-to question")
takes the keyword's points back instead of guessing a negative score that fits every sum. Only
plain rules cancel, and before composites are evaluated: to a composite, a cancelled rule has not
fired. A cancelled rule cancels nothing, and rules cancelling each other in a ring are refused.
``at_most = "high"``: when the rule fires (and is not cancelled), the level is at most that, whatever
the total, as Rspamd's force actions cap an action: for a rule that knows the mail is not an
emergency however many keyword points it collects, without taking back points (or an escalation)
that the mail's own level still needs.
Keywords are matched on NFKC-folded, case-folded text: Japanese ones anywhere (no word
boundaries in Japanese), ASCII ones as whole words. ``levels.toml`` maps the total to critical,
high, normal and low. Files in the override directory replace rules (and levels) by name, key by
key; ``enabled = false`` switches a shipped rule off. Any error refuses the whole set, naming
file, rule and reason, so a reload keeps the rules already running.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailpipe.errors import Problems
from mailpipe.triage.conditions import CONDITIONS, LEVELS, Condition, model_levels
from mailpipe.triage.expression import ExpressionError, Predicate, compile_expression

if TYPE_CHECKING:  # the model's module imports numpy, which the rules need not
    from mailpipe.triage.model import Explained, Gated

__all__ = ["LEVELS", "Rule", "RuleSet", "RulesError", "load"]
_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_TEXT_KEYS = ("any", "subject", "body")
_CONDITION_KEYS = (*_TEXT_KEYS, "regex", "subject_regex", "headers", "sender", "customer", "repeat", "open_case_hours",
                   "dmarc", "outside_business_hours", "incident", "model", "passage", "expression")
_KNOWN_KEYS = frozenset({*_CONDITION_KEYS, "name", "description", "score", "escalate", "examples", "enabled",
                         "cancels", "at_most"})
_EXAMPLE_KEYS = frozenset({"subject", "body", "headers", "sender", "expect", "customer", "dmarc", "incident"})



class RulesError(Problems):
    """Problems in the urgency rules."""


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    score: float
    conditions: tuple[Condition, ...] = ()
    expression: Predicate | None = None
    uses: frozenset[str] = frozenset()
    escalate: str | None = None
    examples: tuple[dict[str, Any], ...] = ()
    source: str = ""
    cancels: frozenset[str] = frozenset()
    at_most: str | None = None  # the highest level the verdict may have when this rule counts
    # The levels of its ``model`` condition and their ``at_least``: it shows their n-grams from there.
    explains: tuple[tuple[str, ...], float] | None = None
    passage: tuple[str, ...] | None = None  # the levels of its ``passage`` condition


@dataclass(frozen=True)
class RuleSet:
    plain: tuple[Rule, ...]
    composites: tuple[Rule, ...]  # in an order where every rule a composite uses comes first
    levels: dict[str, float]
    sources: tuple[str, ...] = field(default=())
    # The plain rules that cancel others, each after every rule that may cancel it: going down the
    # list, a rule that fired and is not cancelled yet is one whose cancels count.
    cancellers: tuple[Rule, ...] = ()

    @cached_property
    def explained(self) -> Explained:
        """The level sets whose n-grams ``model`` conditions show, each with the least probability
        at which one does: what a reading of the model made in another process
        (``triage.reader``) must explain beforehand."""
        least: dict[tuple[str, ...], float] = {}
        for rule in self.plain:
            if rule.explains is not None:
                levels, at_least = rule.explains
                least[levels] = min(at_least, least.get(levels, at_least))
        return tuple(least.items())

    @cached_property
    def passages(self) -> Gated:
        """The level sets ``passage`` conditions ask of a message's paragraphs, each with its rule's
        ``model`` condition, which is checked first: what the model's own process reads beforehand,
        beside ``explained``, for mail that passes one of them."""
        return tuple((rule.passage, *(rule.explains or ((), 0.0))) for rule in self.plain if rule.passage is not None)

    def level(self, score: float) -> str:
        for name in ("critical", "high", "normal"):
            if score >= self.levels[name]:
                return name
        return "low"

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.plain + self.composites


def load(directory: Path, overrides: Path | None = None) -> RuleSet:
    problems: list[str] = []
    specs: dict[str, dict[str, Any]] = {}
    levels: dict[str, Any] = {}
    sources = []
    layers = [sorted(directory.glob("*.toml"))]
    if overrides is not None and overrides.is_dir():
        layers.append(sorted(overrides.glob("*.toml")))
    if not layers[0]:
        problems.append(f"{directory}: no rule files (*.toml)")
    for layer_index, files in enumerate(layers):
        for path in files:
            sources.append(str(path))
            data = _read(path, problems)
            if data is None:
                continue
            for key in sorted(set(data) - {"rule", "levels"}):
                problems.append(f"{path}: unknown top-level key {key!r} (expected [[rule]] or [levels])")
            if isinstance(data.get("levels"), dict):
                levels.update({k: (v, str(path)) for k, v in data["levels"].items()})
            for index, spec in enumerate(data.get("rule", [])):
                name = spec.get("name") if isinstance(spec, dict) else None
                if not isinstance(name, str) or not _NAME.match(name):
                    problems.append(f"{path}: rule #{index + 1}: name {name!r} must be UPPER_SNAKE_CASE")
                    continue
                if name in specs and layer_index == 0:
                    problems.append(f"{path}: rule {name}: defined twice (also in {specs[name]['__source__']})")
                    continue
                merged = {**specs.get(name, {}), **spec, "__source__": str(path)}
                specs[name] = merged
    rules = [rule for spec in specs.values() if spec.get("enabled", True) is not False
             if (rule := _compile(spec, problems)) is not None]
    for rule in rules:
        # Cancelling a rule the operator switched off is harmless; a name never defined is a typo.
        for missing in sorted(rule.cancels - set(specs)):
            problems.append(f"{rule.source}: rule {rule.name}: cancels unknown rule {missing}")
    ruleset = _assemble(rules, _levels(levels, directory, problems), problems)
    if problems:
        raise RulesError(problems)
    return RuleSet(ruleset.plain, ruleset.composites, ruleset.levels, tuple(sources), ruleset.cancellers)


def _read(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: TOML syntax: {exc}")
    return None


def _levels(raw: dict[str, tuple[Any, str]], directory: Path, problems: list[str]) -> dict[str, float]:
    levels = {}
    for name in ("critical", "high", "normal"):
        if name not in raw:
            problems.append(f"{directory}: levels: missing threshold {name!r}")
            continue
        value, source = raw[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{source}: levels.{name}: {value!r} is not a number")
            continue
        levels[name] = float(value)
    for name, (_, source) in raw.items():
        if name not in ("critical", "high", "normal"):
            problems.append(f"{source}: levels.{name}: unknown level (critical, high, normal; below normal is low)")
    if len(levels) == 3 and not levels["critical"] > levels["high"] > levels["normal"]:
        problems.append(f"{directory}: levels: thresholds must fall: critical > high > normal")
    return levels


def _compile(spec: dict[str, Any], problems: list[str]) -> Rule | None:
    source, name = spec["__source__"], spec["name"]
    where = f"{source}: rule {name}"
    before = len(problems)

    def bad(reason: str) -> None:
        problems.append(f"{where}: {reason}")

    for key in sorted(set(spec) - _KNOWN_KEYS - {"__source__"}):
        bad(f"unknown key {key!r}")
    score = spec.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        bad(f"score {score!r} must be a number")
    description = spec.get("description", "")
    if not isinstance(description, str) or not description:
        bad("description is required")
    escalate = spec.get("escalate")
    if escalate not in (None, "tech", "dev"):
        bad(f"escalate {escalate!r} must be \"tech\" or \"dev\"")
    at_most = spec.get("at_most")
    if at_most not in (None, *LEVELS):
        bad(f"at_most {at_most!r} must be one of {', '.join(LEVELS)}")
    present = [key for key in _CONDITION_KEYS if key in spec]
    if not present:
        bad("has no condition")
    expression, uses = None, frozenset()
    conditions: list[Condition] = []
    if "expression" in spec:
        if len(present) > 1:
            bad("a composite rule has only an expression")
        try:
            expression, uses = compile_expression(str(spec["expression"]))
        except ExpressionError as exc:
            bad(f"expression: {exc}")
    else:
        for key in present:
            try:
                conditions.append(CONDITIONS[key](spec[key]))
            except (TypeError, ValueError, re.error) as exc:
                bad(f"{key}: {exc}")
    examples = spec.get("examples", [])
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        bad("examples must be an array of tables")
        examples = []
    for index, example in enumerate(examples):
        unknown = set(example) - _EXAMPLE_KEYS
        if unknown or not isinstance(example.get("expect"), bool):
            bad(f"examples[{index}]: needs expect = true|false and only {sorted(_EXAMPLE_KEYS)}")
    cancels = spec.get("cancels", [])
    if not isinstance(cancels, list) or not all(isinstance(c, str) and _NAME.match(c) for c in cancels):
        bad(f"cancels {cancels!r} must be an array of rule names")
        cancels = []
    elif name in cancels:
        bad("cancels itself")
    elif cancels and "expression" in spec:
        bad("a composite cannot cancel (cancels apply before composites are evaluated)")
    if len(problems) > before:
        return None
    return Rule(name, description, float(score), tuple(conditions), expression, uses, escalate, tuple(examples),
                source, frozenset(cancels), at_most,
                (model_levels(spec["model"]), float(spec["model"]["at_least"])) if "model" in spec else None,
                model_levels(spec["passage"]) if "passage" in spec else None)


def _assemble(rules: list[Rule], levels: dict[str, float], problems: list[str]) -> RuleSet:
    by_name = {rule.name: rule for rule in rules}
    plain = tuple(rule for rule in rules if rule.expression is None)
    composite = [rule for rule in rules if rule.expression is not None]
    for rule in composite:
        for missing in sorted(rule.uses - set(by_name)):
            problems.append(f"{rule.source}: rule {rule.name}: expression uses unknown (or disabled) rule {missing}")
    composites = _in_dependency_order(composite, lambda rule, other: other.name in rule.uses,
                                      "composite rules form a cycle", problems)
    cancellers = _in_dependency_order([rule for rule in plain if rule.cancels],
                                      lambda rule, other: rule.name in other.cancels,
                                      "rules cancel each other in a ring", problems)
    return RuleSet(plain, composites, levels, cancellers=cancellers)


def _in_dependency_order(rules: Iterable[Rule], waits_for: Callable[[Rule, Rule], bool], ring: str,
                         problems: list[str]) -> tuple[Rule, ...]:
    """The rules, each after every one it ``waits_for`` (composites after the rules they use,
    cancellers after the rules that cancel them); rules that wait for each other are a problem."""
    pending = {rule.name: rule for rule in rules}
    ordered: list[Rule] = []
    while pending:
        ready = [rule for rule in pending.values() if not any(waits_for(rule, other) for other in pending.values())]
        if not ready:
            problems.append(f"{next(iter(pending.values())).source}: {ring}: {', '.join(sorted(pending))}")
            break
        for rule in ready:
            ordered.append(rule)
            del pending[rule.name]
    return tuple(ordered)
