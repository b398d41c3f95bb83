"""The learned urgency model: per-level probabilities from a message's subject and new text.

Why: keyword rules know only the phrasing somebody wrote a rule for, and urgent mail is mostly
ordinary phrasing ("now the list is empty", 「文字化けしている」). Like SpamAssassin's Bayes
beside its rules, a linear model trained on labelled mail generalises to wording nobody listed.
It does not decide anything: rules with a ``model`` condition turn its probabilities into
scores, so an operator weighs, overrides or switches it off by rule name.

Features need no tokenizer, so Japanese works as well as English: character 1–5-grams of the
text after the rules' own folding (NFKC, casefold, whitespace collapsed), plus word uni- and
bigrams of its ASCII words, TF-IDF weighted; the classifier is scikit-learn's multinomial
logistic regression with balanced class weights. scikit-learn is imported only to train (it
costs about two seconds); a trained model predicts with numpy alone, in well under a
millisecond, and names the n-grams that weighed most, which ``mailpipe score`` and the triage
card show. It also reads a mail's paragraphs one by one (``passages``), for rules that look for
an emergency told in passing. No model is ever loaded from a file: the daemon trains at start and
on reload from the labelled corpus (:mod:`mailpipe.triage.corpus`) and the desk's corrections
(its own processes hand models to each other pickled: ``triage.fitting``, ``triage.reader``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from mailpipe.errors import Problems
from mailpipe.triage.context import fold
from mailpipe.triage.vocabulary import Vocabulary

if TYPE_CHECKING:  # scikit-learn costs seconds to import: only training imports it
    from sklearn.linear_model import LogisticRegression

# Long pasted logs add little after their first lines and cost time: the model reads this much,
# the start and the end of a longer text (``clipped``).
MAX_CHARS = 3000
_HEAD_CHARS = 2000
_WORD = re.compile(r"[a-z0-9][a-z0-9'._-]*[a-z0-9]|[a-z]")
_WORD_PREFIX = "w:"
# What may explain a verdict: an English word or pair, or three Japanese characters or more
# (English character n-grams such as "ur a" explain nothing to a reader).
_TELLING = re.compile(r"^w:|[^\x00-\x7f].*\w.*\w|\w.*[^\x00-\x7f].*\w|\w.*\w.*[^\x00-\x7f]")
# How many of a message's strongest terms an explanation considers, to find a few that do not overlap.
_CANDIDATES = 40
# Paragraphs are separated by a blank line (``paragraphs``).
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\u3000]*\n")
# How much of a paragraph a rule shows as where it read a level.
_EXCERPT_CHARS = 60
# Regularisation strength and n-gram sizes, chosen by cross-validation on the shipped corpus (mailpipe rules
# eval): 1–5-grams at C = 20 missed 4 fewer critical mails of 853 and promoted 2 fewer low ones than
# 2–4-grams at C = 10, for a third more training CPU (7 s against 5 on an idle machine).
_CHAR_SIZES = (1, 2, 3, 4, 5)
DEFAULT_C = 20.0
# The columns of ``UrgencyModel._by_term``: the idf, each level's coefficient from the second
# on, then whether the term may explain a verdict (1.0) and its length, which end each row.
_IDF, _COEFFICIENTS, _TELLS, _LENGTH = 0, 1, -2, -1


class ModelError(Problems):
    """The labelled mail cannot train a model: a broken corpus file, or a level missing."""


@dataclass(frozen=True)
class Example:
    """One labelled message: the text the model reads and the level a person gave it."""

    document: str
    level: str
    source: str = ""


def features(text: str) -> list[str]:
    """Character n-grams of the folded text, and its ASCII words and word pairs."""
    return _features(_folded(text))


def _features(folded: str) -> list[str]:
    grams = [folded[i:i + size] for size in _CHAR_SIZES for i in range(len(folded) - size + 1)]
    words = _WORD.findall(folded)
    grams += [_WORD_PREFIX + word for word in words]
    grams += [f"{_WORD_PREFIX}{first} {second}" for first, second in pairwise(words)]
    return grams


def clipped(text: str) -> str:
    """What the model reads of a text: all of it, or of a long one its start and its end. A long
    mail is mostly a pasted log, a report or a form, and what the sender asks or tells comes
    before it or after it ("… [4,000 characters of bounces] … none of our 30,000 subscribers got
    anything")."""
    if len(text) <= MAX_CHARS:
        return text
    return f"{text[:_HEAD_CHARS]}\n{text[len(text) - (MAX_CHARS - _HEAD_CHARS - 1):]}"


def _folded(text: str) -> str:
    """The text the features are taken from: ``clipped``, folded (``_spaced``)."""
    return _spaced(fold(clipped(text)))


def _spaced(folded: str) -> str:
    """A folded text with whitespace runs one space, clipped again, since folding may lengthen
    it (NFKC makes "ﷺ" eighteen characters)."""
    return clipped(" ".join(folded.split()))


def paragraphs(document: str) -> list[str]:
    """Each paragraph of a document's text after its first line, the first line before each: a
    new mail's subject, which tells what the paragraph is about ("Remove a user" before "one
    called admin2 that none of us created"). A reply's document has no subject, and its first line
    then leads its paragraphs the same way."""
    first, _, rest = document.partition("\n")
    return [f"{first}\n{paragraph.strip()}" for paragraph in _PARAGRAPH_BREAK.split(rest) if paragraph.strip()]


@dataclass(frozen=True)
class Passage:
    """The paragraph (``paragraphs``) in which the model reads a level set likeliest, and that
    probability."""

    probability: float
    text: str

    @property
    def excerpt(self) -> str:
        """The paragraph's opening, on one line, without the first line every paragraph repeats."""
        opening = " ".join(self.text.partition("\n")[2].split())
        return opening if len(opening) <= _EXCERPT_CHARS else opening[:_EXCERPT_CHARS - 1] + "…"


# How many n-grams a model rule shows as what it matched.
REASONS = 3
# Level sets to explain, each from the probability at which a rule shows it (``RuleSet.explained``).
Explained = tuple[tuple[tuple[str, ...], float], ...]
# Level sets to read paragraphs for, each with the whole mail's probability of other levels a
# rule asks first (``RuleSet.passages``; no levels and 0.0 when it asks none).
Gated = tuple[tuple[tuple[str, ...], tuple[str, ...], float], ...]


class _Levels:
    """The probabilities of a reading, asked for as rules ask: one level or several together."""

    probabilities: dict[str, float]

    def of(self, levels: Sequence[str]) -> float:
        return sum(self.probabilities.get(level, 0.0) for level in levels)

    @property
    def level(self) -> str:
        return max(self.probabilities, key=lambda level: self.probabilities[level])

    def passing(self, asked: Gated) -> list[tuple[str, ...]]:
        """The level sets of ``asked`` whose paragraphs a rule may read after this whole-mail
        reading: any whose gate it passes. Reading paragraphs costs as much again as the whole
        mail, and the shipped rule reads them only for mail with some chance of critical."""
        return list(dict.fromkeys(levels for levels, gate, at_least in asked if self.of(gate) >= at_least))


@dataclass(frozen=True)
class Reading(_Levels):
    """A prediction with its explanations made beforehand, for the level sets the rules show
    (``RuleSet.explained``): what the model's own process (``triage.reader``) sends back."""

    probabilities: dict[str, float]
    explained: dict[tuple[str, ...], list[str]]
    passages: dict[tuple[str, ...], Passage] = field(default_factory=dict)  # of the level sets rules ask

    def reasons(self, levels: Sequence[str], count: int = REASONS) -> list[str]:
        try:
            return self.explained[tuple(levels)][:count]
        except KeyError:
            raise KeyError(f"the reading explains {sorted(self.explained)}, not {tuple(levels)}") from None


@dataclass(frozen=True)
class Prediction(_Levels):
    """The model's probability for each level, and what it read, to explain itself on demand."""

    probabilities: dict[str, float]
    _columns: np.ndarray  # the vocabulary columns of the terms the message has, as read
    _weights: np.ndarray  # their TF-IDF weights
    _terms: np.ndarray  # their rows of ``UrgencyModel._by_term``: idf, coefficients, telling, length
    _vocabulary: Sequence[str]  # the model's terms by column: a term becomes text only to explain
    # Several rules may ask for the same explanation (critical at 0.35 and at 0.5): made once.
    _reasons: dict[tuple[tuple[str, ...], int], list[str]] = field(default_factory=dict, compare=False, repr=False)

    def reading(self, explained: Explained, passages: dict[tuple[str, ...], Passage] | None = None) -> Reading:
        """This prediction with the explanations a rule may show made now: of each level set of
        ``explained`` that reaches its probability (explaining is half of a prediction's cost),
        and the ``passages`` read beside it."""
        return Reading(self.probabilities, {levels: self.reasons(levels) for levels, at_least in explained
                                            if self.of(levels) >= at_least}, passages or {})

    def reasons(self, levels: Sequence[str], count: int = REASONS) -> list[str]:
        """The n-grams that pushed most towards ``levels``, one of each overlapping run."""
        key = (tuple(levels), count)
        if key not in self._reasons:
            self._reasons[key] = self._explain(levels, count)
        return list(self._reasons[key])

    def _explain(self, levels: Sequence[str], count: int) -> list[str]:
        wanted = [_COEFFICIENTS + i for i, level in enumerate(self.probabilities) if level in levels]
        if not wanted or not len(self._columns) or count < 1:
            return []
        weight = self._terms[:, wanted].sum(axis=1) * self._weights
        weight[self._terms[:, _TELLS] == 0.0] = 0.0
        candidates = np.flatnonzero(weight > 0)
        # The strongest few dozen terms are enough to find ``count`` that do not overlap: no full sort.
        if len(candidates) > _CANDIDATES:
            candidates = candidates[np.argpartition(-weight[candidates], _CANDIDATES - 1)[:_CANDIDATES]]
        # N-grams that always occur together weigh the same: the longest of them says the most, and
        # of as long ones the first in the vocabulary, whatever order the message's terms came in.
        columns = self._columns[candidates]
        ranked = columns[np.lexsort((columns, -self._terms[candidates, _LENGTH], -weight[candidates]))]
        chosen: list[str] = []
        for column in ranked.tolist():
            term = self._vocabulary[column].removeprefix(_WORD_PREFIX).strip()
            if not any(term in kept or kept in term for kept in chosen):
                chosen.append(term)
                if len(chosen) == count:
                    break
        return chosen


class UrgencyModel:
    """A trained model, compiled to a vocabulary and weight matrix numpy can apply to one message."""

    def __init__(self, levels: tuple[str, ...], vocabulary: dict[str, int], idf: np.ndarray, coef: np.ndarray,
                 intercept: np.ndarray, trained_on: int):
        self.levels = levels
        self.trained_on = trained_on
        self._vocabulary = Vocabulary(vocabulary, _CHAR_SIZES, _WORD_PREFIX)
        telling = np.fromiter((bool(_TELLING.search(term)) for term in self._vocabulary.terms), dtype=np.float64,
                              count=len(vocabulary))
        lengths = np.fromiter(map(len, self._vocabulary.terms), dtype=np.float64, count=len(vocabulary))
        # By column, the idf, each level's coefficient, whether the term may explain a verdict and
        # its length: all a message's term needs is in one row, read from memory once (the
        # daemon's other stages push the model out of the caches between two messages).
        # Row by row in memory: ``column_stack`` of a transposed matrix lays it out column by
        # column, and a row's seven numbers were then seven far reads.
        self._by_term = np.ascontiguousarray(np.column_stack([idf, coef.T, telling, lengths]))
        self._intercept: list[float] = intercept.tolist()

    def predict(self, text: str, folded: str | None = None) -> Prediction:
        """``folded`` is ``fold(text)`` where the caller has it: the rules fold a message's text
        anyway (``Context.folded_all``: subject and body folded apart and joined by a line break,
        which NFKC composes with nothing, so the same), and folding it again was a tenth of a
        prediction. It serves whenever the text is short enough to be read whole."""
        folded = _spaced(folded if folded is not None and len(text) <= MAX_CHARS else fold(clipped(text)))
        # The terms ``features`` gives, counted: found and counted in numpy
        # (mailpipe.triage.vocabulary), because making each n-gram a string and looking it up was
        # most of what a prediction cost, for a two-line mail too (0.15 ms against 0.06).
        if self._vocabulary.numeric:
            columns, counts = self._vocabulary.counts(folded, _WORD.findall(folded))
        else:
            columns, counts = self._vocabulary.counted(_features(folded))
        terms = self._by_term.take(columns, axis=0)  # a third of what ``self._by_term[columns]`` costs
        weights = (1.0 + np.log(counts)) * terms[:, _IDF]
        if len(weights):
            weights /= math.sqrt(float(weights @ weights))
        scores = (weights @ terms[:, _COEFFICIENTS:_TELLS]).tolist()
        return Prediction(_softmax([b + s for b, s in zip(self._intercept, scores, strict=True)], self.levels),
                          columns, weights, terms, self._vocabulary.terms)

    def reading(self, text: str, explained: Explained, passages: Gated) -> Reading:
        """What rules ask of ``text``, read beforehand (``triage.reader``): the whole mail's reading
        explained as ``explained`` asks, and its paragraphs for the level sets of ``passages``
        whose gate that reading passes."""
        prediction = self.predict(text)
        return prediction.reading(explained, self.passages(text, prediction.passing(passages)))

    def passages(self, text: str, asked: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], Passage]:
        """For each level set ``asked``, the paragraph of ``text`` read likeliest at those levels."""
        if not asked:
            return {}
        read = self.paragraphs_read(text)
        return {levels: passage for levels in asked if (passage := read.strongest(levels)) is not None}

    def paragraphs_read(self, text: str) -> ParagraphsRead:
        """Each paragraph of ``text`` (``paragraphs``) with the model's reading of it alone.
        Why: the whole mail's reading weighs an emergency told in passing ("Apologies if this is
        a silly question. All 8,200 patients we imported now show Deleted") against every calm
        sentence around it; a paragraph read on its own does not. Each paragraph costs a
        prediction of its own length, so the text costs about twice its whole reading."""
        return ParagraphsRead(tuple((paragraph, self.predict(paragraph)) for paragraph in paragraphs(clipped(text))))


@dataclass(frozen=True)
class ParagraphsRead:
    """A text's paragraphs, each with the model's reading of it alone (``UrgencyModel.paragraphs_read``)."""

    read: tuple[tuple[str, Prediction], ...]

    def strongest(self, levels: Sequence[str]) -> Passage | None:
        """The paragraph read likeliest at ``levels``; None for a text with no paragraph."""
        if not self.read:
            return None
        return max((Passage(prediction.of(levels), paragraph) for paragraph, prediction in self.read),
                   key=lambda passage: passage.probability)


def enough(examples: Sequence[Example], levels: Sequence[str]) -> None:
    """Raises ``ModelError`` unless every level has the two examples fitting needs."""
    counts = Counter(example.level for example in examples)
    missing = [level for level in levels if counts[level] < 2]
    if missing:
        raise ModelError([f"labelled mail: fewer than two examples at level {level!r}" for level in missing])


def train(examples: Sequence[Example], levels: Sequence[str], c: float = DEFAULT_C) -> UrgencyModel:
    """Fit on labelled examples. Every level must have at least two examples."""
    enough(examples, levels)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from threadpoolctl import threadpool_limits

    vectorizer = TfidfVectorizer(analyzer=_identity, min_df=2, sublinear_tf=True)
    matrix = vectorizer.fit_transform([features(example.document) for example in examples])
    classifier = new_classifier(c)
    # One thread: BLAS threads fighting the daemon's own (and a busy machine) made fitting 5x slower.
    with threadpool_limits(1):
        classifier.fit(matrix, [example.level for example in examples])
    order = [list(classifier.classes_).index(level) for level in levels]
    return UrgencyModel(tuple(levels), dict(vectorizer.vocabulary_), vectorizer.idf_.astype(np.float64),
                        classifier.coef_[order].astype(np.float64), classifier.intercept_[order].astype(np.float64),
                        len(examples))


def new_classifier(c: float = DEFAULT_C) -> LogisticRegression:
    """The classifier ``train`` fits. Newton-CG to a tight tolerance: twice as fast as lbfgs at its
    default tolerance on the shipped corpus (1.5 s against 3.2), and far closer to the optimum
    (probabilities within 1e-4 of it, against lbfgs's 0.02), so a retrained model moves only
    where the labelled mail did."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", solver="newton-cg", tol=1e-6, max_iter=1000)


def _identity(terms: list[str]) -> list[str]:
    return terms


def _softmax(scores: list[float], levels: Sequence[str]) -> dict[str, float]:
    """In plain Python: numpy's per-call cost is most of the work for four numbers."""
    top = max(scores)
    shifted = [math.exp(score - top) for score in scores]
    total = sum(shifted)
    return {level: value / total for level, value in zip(levels, shifted, strict=True)}
