"""Rule conditions: each builder turns a rule's TOML value into a function of the context that
returns what matched (shown by ``mailpipe score`` and on the triage card) or None.

The keys and what they mean are listed in :mod:`mailpipe.triage.rules`; a builder raises
``TypeError`` or ``ValueError`` with a readable reason, which the loader reports with the file
and rule name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mailpipe.providers import MENTIONS, provider_of
from mailpipe.store import CONTACTS_DAYS, CONTACTS_KEPT
from mailpipe.triage.context import Context, fold

LEVELS = ("critical", "high", "normal", "low")

Condition = Callable[[Context], str | None]


def _keywords(value: Any, where: Callable[[Context], str]) -> Condition:
    words = _strings(value)
    ascii_words = [re.escape(fold(w)) for w in words if w.isascii()]
    other_words = [re.escape(fold(w)) for w in words if not w.isascii()]
    alternatives = []
    if ascii_words:
        longest_first = "|".join(sorted(ascii_words, key=len, reverse=True))
        # An identifier that negates the word is not the word: ERR_NAME_NOT_RESOLVED solved nothing
        # (while ACCOUNT_COMPROMISED and _today_ say what they say).
        alternatives.append(r"(?<![a-z0-9])(?<!(?<![a-z0-9])not_)(?<!(?<![a-z0-9])no_)(?<!(?<![a-z0-9])non_)"
                            rf"(?:{longest_first})(?![a-z0-9])")
    if other_words:
        alternatives.append("|".join(sorted(other_words, key=len, reverse=True)))
    pattern = re.compile("|".join(alternatives))
    # The words alone, without the lookarounds: every match of ``pattern`` starts with one of
    # them, so where none occurs ``pattern`` cannot match, and it cannot match before the first
    # one either. A pattern that starts with a plain word list lets the regex engine skip ahead
    # to the characters a word can start with; one that starts with lookbehinds is tried at
    # every position, several times slower on the text most messages have.
    words_alone = re.compile("|".join(ascii_words + other_words))

    def condition(context: Context) -> str | None:
        text = where(context)
        first = words_alone.search(text)
        if first is None:
            return None
        # From the first word on: the lookbehinds still see the text before it.
        match = pattern.search(text, first.start())
        return match[0] if match else None

    return condition


def _regex(value: Any, where: Callable[[Context], str]) -> Condition:
    patterns = [re.compile(p, re.IGNORECASE) for p in _strings(value)]

    def condition(context: Context) -> str | None:
        for pattern in patterns:
            match = pattern.search(where(context))
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


def _model(value: Any) -> Condition:
    """Fires when the learned model gives the level (or the levels together) at least this
    probability, and, with ``ahead_of``, more than it gives those other levels: a fair chance of
    low is a calm tone, and no reason to lower a mail the model thinks likelier critical still.
    Shows the probability and the n-grams that weighed most towards it."""
    levels, at_least = _probability(value, {"ahead_of"}, " (optionally with ahead_of = [...])")
    rivals = _levels(value["ahead_of"]) if "ahead_of" in value else []
    if set(rivals) & set(levels):
        raise ValueError("ahead_of must name levels other than the rule's own")
    shown = "+".join(levels)

    def condition(context: Context) -> str | None:
        prediction = context.urgency
        if prediction is None:
            return None
        probability = prediction.of(levels)
        if probability < at_least or (rivals and probability <= prediction.of(rivals)):
            return None
        reasons = ", ".join(f'"{term}"' for term in prediction.reasons(levels))
        return f"p({shown})={probability:.2f}" + (f": {reasons}" if reasons else "")

    return condition


def _passage(value: Any) -> Condition:
    """Fires when one paragraph of the mail, read by the learned model on its own after the
    subject, gives the level (or the levels together) at least this probability: an emergency
    told in passing inside a routine question, which the calm around it dilutes in the whole
    mail's reading. Shows the probability and the paragraph's opening."""
    levels, at_least = _probability(value, set(), "")
    shown = "+".join(levels)

    def condition(context: Context) -> str | None:
        passage = context.passage(levels)
        if passage is None or passage.probability < at_least:
            return None
        return f'p({shown})={passage.probability:.2f} in "{passage.excerpt}"'

    return condition


def _probability(value: Any, optional: set[str], also: str) -> tuple[tuple[str, ...], float]:
    """The levels and ``at_least`` of a ``model`` or ``passage`` condition, checked."""
    if not isinstance(value, dict) or set(value) - {"level", "levels", "at_least", *optional} \
            or "at_least" not in value or ("level" in value) == ("levels" in value):
        raise TypeError('must be { level = "critical", at_least = 0.6 } or { levels = [...], at_least = 0.5 }' + also)
    at_least = value["at_least"]
    if isinstance(at_least, bool) or not isinstance(at_least, (int, float)) or not 0 < at_least <= 1:
        raise ValueError("at_least must be a probability above 0 and at most 1")
    return model_levels(value), float(at_least)


def model_levels(value: dict[str, Any]) -> tuple[str, ...]:
    """The levels a ``model`` condition weighs together, and explains when they reach its
    ``at_least``: what ``RuleSet.explained`` gathers, so that the model's own process explains a
    reading for exactly the level sets a rule may show."""
    return tuple(_levels(value["level"] if "level" in value else value["levels"]))


def _levels(value: Any) -> list[str]:
    """A level or an array of them, each one of LEVELS."""
    levels = _strings([value] if isinstance(value, str) else value)
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    return levels


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise TypeError("must be a non-empty array of strings")
    return value


CONDITIONS: dict[str, Callable[[Any], Condition]] = {
    "any": lambda v: _keywords(v, lambda c: c.folded_all),
    "subject": lambda v: _keywords(v, lambda c: c.folded_subject),
    "body": lambda v: _keywords(v, lambda c: c.folded_body),
    "regex": lambda v: _regex(v, lambda c: c.folded_all),
    "subject_regex": lambda v: _regex(v, lambda c: c.folded_subject),
    "headers": _headers,
    "sender": _sender,
    "customer": _customer,
    "repeat": _repeat,
    "open_case_hours": _open_case_hours,
    "dmarc": _dmarc,
    "outside_business_hours": _outside_business_hours,
    "incident": _incident,
    "model": _model,
    "passage": _passage,
}
