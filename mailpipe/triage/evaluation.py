"""``mailpipe rules eval``: how well the rules, the model and both together put labelled mail at
the level a person gave it.

Three columns of the same mail: the rules with the model switched off, the model alone (its most
probable level), and the rules with the model as the daemon runs them. Mail the model was
trained on is judged by k-fold cross-validation (each fold scored by a model that never saw it);
other labelled files are judged by a model trained on the whole training corpus. The figures a
desk cares about come first: how many critical mails reach high or above, urgent (critical +
high) recall and precision, and how many low mails are promoted to high or critical.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailpipe.message import ParsedMessage, parse
from mailpipe.triage.conditions import LEVELS
from mailpipe.triage.context import Context
from mailpipe.triage.corpus import message
from mailpipe.triage.model import Example, UrgencyModel, train
from mailpipe.triage.rules import RuleSet
from mailpipe.triage.score import evaluate

URGENT = ("critical", "high")
MODES = ("rules", "model", "both")


@dataclass(frozen=True)
class Labelled:
    """A labelled message ready to score: the parsed mail and what the model reads of it."""

    message: ParsedMessage
    example: Example


@dataclass(frozen=True)
class Scores:
    """Expected and predicted level of every message, and the figures derived from them."""

    pairs: tuple[tuple[str, str], ...]

    def confusion(self) -> dict[str, dict[str, int]]:
        counts = Counter(self.pairs)
        return {expected: {predicted: counts[expected, predicted] for predicted in LEVELS} for expected in LEVELS}

    def per_level(self) -> dict[str, dict[str, float]]:
        expected = Counter(e for e, _ in self.pairs)
        predicted = Counter(p for _, p in self.pairs)
        correct = Counter(e for e, p in self.pairs if e == p)
        return {level: {"precision": _ratio(correct[level], predicted[level]),
                        "recall": _ratio(correct[level], expected[level]), "count": expected[level]}
                for level in LEVELS}

    def summary(self) -> dict[str, Any]:
        urgent_expected = sum(e in URGENT for e, _ in self.pairs)
        urgent_predicted = sum(p in URGENT for _, p in self.pairs)
        urgent_both = sum(e in URGENT and p in URGENT for e, p in self.pairs)
        return {
            "messages": len(self.pairs),
            "exact": _ratio(sum(e == p for e, p in self.pairs), len(self.pairs)),
            "critical_at_high_or_above": sum(e == "critical" and p in URGENT for e, p in self.pairs),
            "critical": sum(e == "critical" for e, _ in self.pairs),
            "urgent_recall": _ratio(urgent_both, urgent_expected),
            "urgent_precision": _ratio(urgent_both, urgent_predicted),
            "low_promoted": sum(e == "low" and p in URGENT for e, p in self.pairs),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "levels": self.per_level(), "confusion": self.confusion()}


def assess(rules: RuleSet, training: Sequence[tuple[dict[str, Any], Example]],
           judged: Sequence[tuple[dict[str, Any], Example]] | None, folds: int, now: datetime) -> dict[str, Scores]:
    """The three columns for ``judged`` (a model trained on the rest of ``training``), or for the
    training corpus itself by ``folds``-fold cross-validation when ``judged`` is None."""
    if judged is None:
        examples = [example for _, example in training]
        return judge(rules, labelled(training), cross_validated(examples, folds), now)
    sources = {example.source for _, example in judged}
    model = train([example for _, example in training if example.source not in sources], LEVELS)
    return judge(rules, labelled(judged), [model] * len(judged), now)


def labelled(pairs: Sequence[tuple[dict[str, Any], Example]]) -> list[Labelled]:
    return [Labelled(parse(message(entry)), example) for entry, example in pairs]


def judge(rules: RuleSet, labelled: Sequence[Labelled], models: Sequence[UrgencyModel], now: datetime
          ) -> dict[str, Scores]:
    """Score every message in each mode; ``models[i]`` is the model that judges ``labelled[i]``."""
    pairs: dict[str, list[tuple[str, str]]] = {mode: [] for mode in MODES}
    for item, model in zip(labelled, models, strict=True):
        expected = item.example.level
        pairs["rules"].append((expected, evaluate(rules, Context(item.message, now)).level))
        pairs["model"].append((expected, model.predict(item.example.document).level))
        pairs["both"].append((expected, evaluate(rules, Context(item.message, now, model=model)).level))
    return {mode: Scores(tuple(found)) for mode, found in pairs.items()}


def cross_validated(examples: Sequence[Example], folds: int, c: float | None = None) -> list[UrgencyModel]:
    """For each example, a model trained on the other folds (every ``folds``-th example is a fold)."""
    trained = [train([e for i, e in enumerate(examples) if i % folds != fold], LEVELS, **_c(c))
               for fold in range(folds)]
    return [trained[i % folds] for i in range(len(examples))]


def _c(c: float | None) -> dict[str, float]:
    return {} if c is None else {"c": c}


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 3) if whole else 0.0
