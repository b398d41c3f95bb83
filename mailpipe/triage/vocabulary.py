"""A trained model's vocabulary compiled to one integer hash table, so that the known terms of
a message are found and counted by a handful of numpy calls instead of one Python string each.

Why: building every character n-gram of a message as a string, counting the strings and
looking each up in a dict of ~380,000 terms was most of what the urgency model cost per message
(a few hundred strings for a short mail, thousands for a pasted log). Here a character is its
rank in the vocabulary's alphabet (1 up; one more for a character no term has) and an n-gram is
its ranks read as the digits of a number in base ``alphabet + 2``: no digit is 0, so n-grams of
different lengths never share a number, and one with an unknown character matches no term. The
numbers of every n-gram of a message come from its ranks by a multiply and an add per length.
A word or a word pair is a negative number from Python's own hash of it (words and pairs in
halves of their own, so neither meets the other nor an n-gram).

The numbers are sorted and counted by their runs, and each distinct one is looked up once in
``_Table``. In the daemon the other stages of a message push the model out of the CPU's caches
between two messages, so what a lookup costs is mostly memory reads from far away: a binary
search over the sorted terms made a dozen of them per n-gram, and the words' dict lookups three
each (0.33 ms of a 0.56 ms prediction, caches cold); the table makes one, or two for the few
n-grams in a crowded slot.

Exact: ``counts`` gives what counting ``features()`` and keeping the known terms gives, the same
terms with the same counts, except that a word or pair the model does not know whose 62-bit hash
equals one's it knows (one chance in 2**62 for each such pair) would count as that one.
Five characters of an alphabet of more than 6,206 do not fit in 63 bits; a vocabulary that large
(a desk's own corpus could bring it) counts terms as strings, exactly and more slowly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise, repeat

import numpy as np

# Sorts after every number: a search never runs off the end of a sorted table.
_SENTINEL = np.iinfo(np.int64).max
# Words and pairs: below zero, a half of the negative numbers each.
_HALF = (1 << 62) - 1
# Fibonacci hashing (Knuth): a number's slot is the top bits of its product with 2**64 / phi.
_SCRAMBLE = np.uint64(0x9E3779B97F4A7C15)
# At least this many slots per known number (a power of two): most numbers of a message find
# their slot empty or their own, and only the rest search the few that shared a slot with another.
# For the shipped corpus that is 2**21 slots, 32 MB (the sorted table it replaced was 5.5); half
# as many made a prediction 5 % slower.
_ROOM = 3


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
        self._table: _Table | None = None
        if self.numeric:
            words = {term.removeprefix(word_prefix): column for term, column in terms.items()
                     if term.startswith(word_prefix)}
            singles = [word for word in words if " " not in word]
            pairs = [word for word in words if " " in word]
            numbers = np.concatenate([_numbers(grams, alphabet, self._base), _words(singles),
                                      _pairs(tuple(pair.split(" ", 1)) for pair in pairs)])
            columns = [*grams.values(), *map(words.__getitem__, singles), *map(words.__getitem__, pairs)]
            self._table = _Table(numbers, np.array(columns, dtype=np.int64))

    def __reduce__(self) -> tuple[type[Vocabulary], tuple[dict[str, int], tuple[int, ...], str]]:
        """Pickled as what it is made of, and made again where it is unpickled: a word's number
        is Python's hash of it, which differs from process to process (PYTHONHASHSEED)."""
        return Vocabulary, (self._by_term, self._char_sizes, self._word_prefix)

    def counts(self, text: str, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The columns of the known terms among ``text``'s character n-grams and ``words``'
        words and pairs, and how often each appears. Only for a ``numeric`` vocabulary."""
        assert self._table is not None, "a numeric vocabulary only"
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ranks = self._ranks[np.minimum(codes, len(self._ranks) - 1)]
        numbers, grams = [_words(words), _pairs(pairwise(words))], ranks
        for size in range(1, self._char_sizes[-1] + 1):
            if size > 1:
                grams = grams[:-1] * self._base + ranks[size - 1:]
            if size in self._char_sizes:
                numbers.append(grams)
        distinct, counts = _runs(np.sort(np.concatenate(numbers)))
        columns = self._table.find(distinct)
        known = columns >= 0
        columns, counts = columns[known], counts[known]
        # A text with the word prefix in it may hold a word's own term as characters ("w:ok"):
        # both count.
        if self._word_prefix in text:
            return _summed(columns, counts)
        # By column: the order of words' numbers is their hashes', which differ from process to
        # process, and the sums of a prediction must not (the model's own process reads as the
        # daemon does, to the last bit).
        order = np.argsort(columns)
        return columns[order], counts[order]

    def counted(self, terms: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """What ``counts`` gives, from the terms as strings: for a vocabulary too large to number."""
        counted = Counter(terms)
        found = np.fromiter(map(self._by_term.get, counted, repeat(-1)), dtype=np.int64, count=len(counted))
        known = found >= 0
        return found[known], np.fromiter(counted.values(), dtype=np.int64, count=len(counted))[known]


class _Table:
    """Numbers to columns: a slot of its own for the first number of each slot, the rest
    (those that hashed to a slot taken already) in a small sorted table beside it."""

    def __init__(self, numbers: np.ndarray, columns: np.ndarray):
        self._shift = np.uint64(64 - max(4, math.ceil(math.log2(max(len(numbers), 1) * _ROOM))))
        slots = self._slots(numbers)
        order = np.argsort(slots, kind="stable")
        ordered = slots[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        size = 1 << (64 - int(self._shift))
        # A slot is its number and its column side by side: one memory read finds both. 0 is no
        # number (an n-gram's digits start at 1, words and pairs are below 0): an empty slot.
        self._held = np.zeros((size, 2), dtype=np.int64)
        self._held[:, 1] = -1
        taken = order[first]
        self._held[slots[taken], 0] = numbers[taken]
        self._held[slots[taken], 1] = columns[taken]
        crowded = order[~first]
        by_number = np.argsort(numbers[crowded])
        self._crowded = np.append(numbers[crowded][by_number], _SENTINEL)
        self._crowded_columns = np.append(columns[crowded][by_number], -1)

    def _slots(self, numbers: np.ndarray) -> np.ndarray:
        return ((numbers.view(np.uint64) * _SCRAMBLE) >> self._shift).astype(np.intp)

    def find(self, numbers: np.ndarray) -> np.ndarray:
        """The column of each number, -1 for one the table does not hold."""
        # ``take`` along the rows: a third of the cost of ``self._held[slots]``, numpy's
        # general fancy indexing.
        held = self._held.take(self._slots(numbers), axis=0)
        found = held[:, 0]
        columns = np.where(found == numbers, held[:, 1], -1)
        elsewhere = np.flatnonzero((found != numbers) & (found != 0))
        if len(elsewhere):
            wanted = numbers[elsewhere]
            positions = np.searchsorted(self._crowded, wanted)
            hit = self._crowded[positions] == wanted
            columns[elsewhere[hit]] = self._crowded_columns[positions[hit]]
        return columns


def _words(words: Iterable[str]) -> np.ndarray:
    """Each word's number: from -1 down to -2**62."""
    return -1 - (np.fromiter(map(hash, words), dtype=np.int64) & _HALF)


def _pairs(pairs: Iterable[tuple[str, str]]) -> np.ndarray:
    """Each word pair's number: below every word's."""
    return -(1 << 62) - 1 - (np.fromiter(map(hash, pairs), dtype=np.int64) & _HALF)


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


def _numbers(grams: Iterable[str], alphabet: list[str], base: int) -> np.ndarray:
    """Each n-gram's number: its characters' ranks as digits."""
    ranks = {char: rank for rank, char in enumerate(alphabet, start=1)}

    def number(term: str) -> int:
        value = 0
        for char in term:
            value = value * base + ranks[char]
        return value

    return np.fromiter(map(number, grams), dtype=np.int64)
