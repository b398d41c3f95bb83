"""Urgency rules as data: load, validate and compile ``rules/*.toml`` plus one override layer.

A rule (in the spirit of SpamAssassin/Rspamd symbols) has an UPPER_SNAKE ``name``, a
``description``, a ``score`` (negative for newsletters, auto-replies, "not urgent") and
conditions that must all hold:

    any / subject / body = ["keyword", ...]   a keyword in subject+new text (a reply: new text only)
                                              / the subject / the new text
    regex = ["pattern", ...]                  a regular expression on subject + new text
    headers = { Auto-Submitted = "^auto-" }   every listed header matches (regex, decoded)
    sender = ["@bank\\.example$"]             the sender address matches one pattern
    customer = { vip = true, plan = ["enterprise"] }
    repeat = { within_hours = 24, at_least = 2 }      earlier contacts from this customer (up to 720 h, 100)
    open_case_hours = 48                      the customer's open case is at least this old
    dmarc = "fail"                            what Authentication-Results said of DMARC
    outside_business_hours = true
    incident = true | ["gmail", ...]          a provider the message names has an active incident
    expression = "NOT_DELIVERED & VIP & !AUTO_REPLY"  a composite: only this condition

and optionally ``escalate = "tech"`` or ``"dev"`` and ``examples`` that ``mailpipe rules test``
checks. Keywords are matched on NFKC-folded, case-folded text: Japanese ones anywhere (no word
boundaries in Japanese), ASCII ones as whole words. ``levels.toml`` maps the total to critical,
high, normal and low. Files in the override directory replace rules (and levels) by name, key by
key; ``enabled = false`` switches a shipped rule off. Any error refuses the whole set, naming
file, rule and reason, so a reload keeps the rules already running.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailpipe.errors import Problems
from mailpipe.providers import MENTIONS, provider_of
from mailpipe.store import CONTACTS_DAYS, CONTACTS_KEPT
from mailpipe.triage.context import Context, fold
from mailpipe.triage.expression import ExpressionError, Predicate, compile_expression

LEVELS = ("critical", "high", "normal", "low")
_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_TEXT_KEYS = ("any", "subject", "body")
_CONDITION_KEYS = (*_TEXT_KEYS, "regex", "headers", "sender", "customer", "repeat", "open_case_hours", "dmarc",
                   "outside_business_hours", "incident", "expression")
_KNOWN_KEYS = frozenset({*_CONDITION_KEYS, "name", "description", "score", "escalate", "examples", "enabled"})
_EXAMPLE_KEYS = frozenset({"subject", "body", "headers", "sender", "expect", "customer", "dmarc", "incident"})

Condition = Callable[[Context], str | None]


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


@dataclass(frozen=True)
class RuleSet:
    plain: tuple[Rule, ...]
    composites: tuple[Rule, ...]  # in an order where every rule a composite uses comes first
    levels: dict[str, float]
    sources: tuple[str, ...] = field(default=())

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
    rules = [_compile(spec, problems) for spec in specs.values() if spec.get("enabled", True) is not False]
    ruleset = _assemble([r for r in rules if r is not None], _levels(levels, directory, problems), problems)
    if problems:
        raise RulesError(problems)
    return RuleSet(ruleset.plain, ruleset.composites, ruleset.levels, tuple(sources))


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
                conditions.append(_CONDITIONS[key](spec[key]))
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
    if len(problems) > before:
        return None
    return Rule(name, description, float(score), tuple(conditions), expression, uses, escalate, tuple(examples),
                source)


def _assemble(rules: list[Rule], levels: dict[str, float], problems: list[str]) -> RuleSet:
    by_name = {rule.name: rule for rule in rules}
    plain = tuple(rule for rule in rules if rule.expression is None)
    pending = {rule.name: rule for rule in rules if rule.expression is not None}
    for rule in pending.values():
        for missing in sorted(rule.uses - set(by_name)):
            problems.append(f"{rule.source}: rule {rule.name}: expression uses unknown (or disabled) rule {missing}")
    ordered: list[Rule] = []
    done = {rule.name for rule in plain}
    while pending:
        ready = [rule for rule in pending.values() if rule.uses <= done | (rule.uses - set(by_name))]
        if not ready:
            cycle = ", ".join(sorted(pending))
            problems.append(f"{next(iter(pending.values())).source}: composite rules form a cycle: {cycle}")
            break
        for rule in ready:
            ordered.append(rule)
            done.add(rule.name)
            del pending[rule.name]
    return RuleSet(plain, tuple(ordered), levels)


# Condition builders: each turns a TOML value into a function of the context that returns what
# matched (shown in `mailpipe score`) or None.

def _keywords(value: Any, where: Callable[[Context], str]) -> Condition:
    words = _strings(value)
    ascii_words = [re.escape(fold(w)) for w in words if w.isascii()]
    other_words = [re.escape(fold(w)) for w in words if not w.isascii()]
    alternatives = []
    if ascii_words:
        longest_first = "|".join(sorted(ascii_words, key=len, reverse=True))
        alternatives.append(rf"(?<![a-z0-9])(?:{longest_first})(?![a-z0-9])")
    if other_words:
        alternatives.append("|".join(sorted(other_words, key=len, reverse=True)))
    pattern = re.compile("|".join(alternatives))

    def condition(context: Context) -> str | None:
        match = pattern.search(where(context))
        return match[0] if match else None

    return condition


def _regex(value: Any) -> Condition:
    patterns = [re.compile(p, re.IGNORECASE) for p in _strings(value)]

    def condition(context: Context) -> str | None:
        for pattern in patterns:
            match = pattern.search(context.folded_all)
            if match:
                return match[0]
        return None

    return condition


def _headers(value: Any) -> Condition:
    if not isinstance(value, dict) or not value:
        raise TypeError("must be a table of header = \"regex\"")
    wanted = {name.lower(): re.compile(str(pattern), re.IGNORECASE) for name, pattern in value.items()}

    def condition(context: Context) -> str | None:
        shown = []
        for name, pattern in wanted.items():
            hit = next((v for v in context.message.headers.get(name, ()) if pattern.search(v)), None)
            if hit is None:
                return None
            shown.append(f"{name}: {hit}")
        return "; ".join(shown)

    return condition


def _sender(value: Any) -> Condition:
    patterns = [re.compile(p, re.IGNORECASE) for p in _strings(value)]

    def condition(context: Context) -> str | None:
        sender = context.message.sender
        return sender if any(p.search(sender) for p in patterns) else None

    return condition


def _customer(value: Any) -> Condition:
    if not isinstance(value, dict) or not set(value) <= {"vip", "plan"}:
        raise TypeError("must be a table with vip = true|false and/or plan = [...]")
    vip = value.get("vip")
    plans = {p.casefold() for p in _strings(value["plan"])} if "plan" in value else None

    def condition(context: Context) -> str | None:
        customer = context.customer
        if customer is None:
            return None
        if vip is not None and context.trusted_vip != vip:
            return None
        if plans is not None and customer.plan.casefold() not in plans:
            return None
        return f"customer {customer.address} (vip={customer.vip}, plan={customer.plan or '-'})"

    return condition


def _repeat(value: Any) -> Condition:
    if not isinstance(value, dict) or set(value) != {"within_hours", "at_least"}:
        raise TypeError("must be { within_hours = N, at_least = N }")
    hours, at_least = float(value["within_hours"]), int(value["at_least"])
    if not 1 <= at_least <= CONTACTS_KEPT:
        raise ValueError(f"at_least must be 1 to {CONTACTS_KEPT}: a profile keeps the latest {CONTACTS_KEPT} contacts")
    if hours > CONTACTS_DAYS * 24:
        raise ValueError(f"within_hours must be at most {CONTACTS_DAYS * 24}: a profile keeps {CONTACTS_DAYS} days")

    def condition(context: Context) -> str | None:
        count = context.history.contacts_within(hours, context.now)
        return f"{count} earlier contacts in {hours:g} h" if count >= at_least else None

    return condition


def _open_case_hours(value: Any) -> Condition:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("must be a number of hours")

    def condition(context: Context) -> str | None:
        age = context.history.open_case_age_hours(context.now)
        return f"open case {age:.0f} h old" if age is not None and age >= value else None

    return condition


def _dmarc(value: Any) -> Condition:
    if value not in ("pass", "fail", "none"):
        raise ValueError("must be \"pass\", \"fail\" or \"none\"")
    return lambda context: f"dmarc={value}" if context.dmarc == value else None


def _outside_business_hours(value: Any) -> Condition:
    if not isinstance(value, bool):
        raise TypeError("must be true or false")
    return lambda context: ("outside business hours" if not context.business_hours else None) if value else (
        "within business hours" if context.business_hours else None)


def _incident(value: Any) -> Condition:
    """Fires when the message names a provider (Gmail, ヤフー, Outlook, …) that is refusing our
    mail right now; ``true`` for any provider, or a list to restrict it."""
    if value is True:
        providers = frozenset(MENTIONS)
    elif isinstance(value, list):
        providers = frozenset(provider_of(name) for name in _strings(value))
    else:
        raise TypeError("must be true or an array of providers")

    def condition(context: Context) -> str | None:
        for provider in sorted(providers & context.incidents):
            mention = MENTIONS[provider].search(context.folded_all)
            if mention:
                return f"incident.{provider} active; the message names {mention[0]}"
        return None

    return condition


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise TypeError("must be a non-empty array of strings")
    return value


_CONDITIONS: dict[str, Callable[[Any], Condition]] = {
    "any": lambda v: _keywords(v, lambda c: c.folded_all),
    "subject": lambda v: _keywords(v, lambda c: c.folded_subject),
    "body": lambda v: _keywords(v, lambda c: c.folded_body),
    "regex": _regex,
    "headers": _headers,
    "sender": _sender,
    "customer": _customer,
    "repeat": _repeat,
    "open_case_hours": _open_case_hours,
    "dmarc": _dmarc,
    "outside_business_hours": _outside_business_hours,
    "incident": _incident,
}
