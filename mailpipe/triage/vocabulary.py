"""A trained model's vocabulary compiled to one sorted integer table, so that the known terms of
a message are found and counted by a handful of numpy calls instead of one Python string each.

Why: building every character n-gram of a message as a string, counting the strings and
looking each up in a dict of ~230,000 terms was most of what the urgency model cost per message
(a few hundred strings for a short mail, thousands for a pasted log). Here a character is its
rank in the vocabulary's alphabet (1 up; one more for a character no term has) and an n-gram is
its ranks read as the digits of a number in base ``alphabet + 2``: no digit is 0, so n-grams of
different lengths never share a number, and one with an unknown character matches no term. The
numbers of every n-gram of a message come from its ranks by a multiply and an add per length;
sorted, they are counted by their runs, and one ``searchsorted`` finds the distinct ones among
the terms' (a trie searched level by level, as before, made four searches and a second sort:
0.26 ms against 0.17 for a mail of 350 characters). Words and word pairs, a few dozen a message,
are looked up by dict, pairs as tuples of the words.

Five characters of an alphabet of more than 6,206 do not fit in 63 bits; a vocabulary that large
(a desk's own corpus could bring it) counts terms as strings, exactly and more slowly.

``counts`` gives what counting ``features()`` and keeping the known terms gives: the same
terms with the same counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise, repeat

import numpy as np

# Sorts after every n-gram's number: a search never runs off the end of the table.
_SENTINEL = np.iinfo(np.int64).max


class Vocabulary:
    """A model's terms (by column) and the table that finds them in a message."""

    def __init__(self, terms: dict[str, int], char_sizes: Sequence[int], word_prefix: str):
        self._by_term = terms
        self._word_prefix = word_prefix
        self.terms: list[str] = [""] * len(terms)
        for term, column in terms.items():
            self.terms[column] = term
        self._char_sizes = tuple(sorted(char_sizes))
        # A term of an n-gram's length may be one, a term with the prefix a word or a pair;
        # "w:ok" may be both, and both then count towards its one column, as in ``features``.
        grams = {term: column for term, column in terms.items() if len(term) in self._char_sizes}
        alphabet = sorted({char for term in grams for char in term})
        unknown = len(alphabet) + 1
        self._base = unknown + 1
        self.numeric = self._base ** max(self._char_sizes) <= _SENTINEL
        # A code point above every letter's is read as the last entry: unknown.
        self._ranks = np.full(ord(alphabet[-1]) + 2 if alphabet else 1, unknown, dtype=np.int64)
        self._ranks[[ord(char) for char in alphabet]] = np.arange(1, len(alphabet) + 1, dtype=np.int64)
        self._table, self._columns = _table(grams, alphabet, self._base) if self.numeric else (None, None)
        words = {term.removeprefix(word_prefix): column for term, column in terms.items()
                 if term.startswith(word_prefix)}
        self._words = {word: column for word, column in words.items() if " " not in word}
        self._pairs = {tuple(word.split(" ", 1)): column for word, column in words.items() if " " in word}

    def counts(self, text: str, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The columns of the known terms among ``text``'s character n-grams and ``words``'
        words and pairs, and how often each appears. Only for a ``numeric`` vocabulary."""
        assert self._table is not None and self._columns is not None, "a numeric vocabulary only"
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ranks = self._ranks[np.minimum(codes, len(self._ranks) - 1)]
        numbers, grams = [], ranks
        for size in range(1, self._char_sizes[-1] + 1):
            if size > 1:
                grams = grams[:-1] * self._base + ranks[size - 1:]
            if size in self._char_sizes:
                numbers.append(grams)
        # Sorted, the n-grams are counted by their runs, and each distinct one is searched once,
        # in ascending order, which numpy's search does best.
        distinct, counts = _runs(np.sort(np.concatenate(numbers)))
        positions = np.searchsorted(self._table, distinct)
        known = self._table[positions] == distinct
        columns, counts = self._columns[positions[known]], counts[known]
        terms = Counter(map(self._words.get, words))
        terms.update(map(self._pairs.get, pairwise(words)))
        terms.pop(None, None)
        if not terms:
            return columns, counts
        columns = np.append(columns, np.fromiter(terms, dtype=np.int64, count=len(terms)))
        counts = np.append(counts, np.fromiter(terms.values(), dtype=np.int64, count=len(terms)))
        # A text with the word prefix in it may hold a word's own term as characters ("w:ok"):
        # both count.
        return _summed(columns, counts) if self._word_prefix in text else (columns, counts)

    def counted(self, terms: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """What ``counts`` gives, from the terms as strings: for a vocabulary too large to number."""
        counted = Counter(terms)
        found = np.fromiter(map(self._by_term.get, counted, repeat(-1)), dtype=np.int64, count=len(counted))
        known = found >= 0
        return found[known], np.fromiter(counted.values(), dtype=np.int64, count=len(counted))[known]


def _runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a sorted array and how often each appears."""
    if not len(ordered):
        return ordered, ordered
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.diff(np.append(starts, len(ordered)))


def _summed(columns: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column once, with the counts of its repeats added up."""
    distinct, where = np.unique(columns, return_inverse=True)
    return distinct, np.bincount(where, weights=counts).astype(np.int64)


def _table(grams: dict[str, int], alphabet: list[str], base: int) -> tuple[np.ndarray, np.ndarray]:
    """The terms' numbers, sorted and ended by the sentinel, and the column of each (-1 for the
    sentinel's place)."""
    ranks = {char: rank for rank, char in enumerate(alphabet, start=1)}

    def number(term: str) -> int:
        value = 0
        for char in term:
            value = value * base + ranks[char]
        return value

    numbers = np.fromiter(map(number, grams), dtype=np.int64, count=len(grams))
    order = np.argsort(numbers)
    columns = np.fromiter(grams.values(), dtype=np.int64, count=len(grams))[order]
    return np.append(numbers[order], _SENTINEL), np.append(columns, -1)
