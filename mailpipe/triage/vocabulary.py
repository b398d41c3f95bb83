"""A trained model's vocabulary compiled to integer tables, so that the known terms of a message
are found and counted by numpy instead of one Python string at a time.

Why: building every character n-gram of a message as a string, counting the strings and
looking each up in a dict of ~90,000 terms was most of what the urgency model cost per message
(a few hundred strings for a short mail, thousands for a pasted log). Here a message is its
array of code points. A character is its rank in the vocabulary's alphabet; an n-gram is the
(n-1)-gram it starts with extended by one character, one step along a trie of the vocabulary's
character terms kept level by level as sorted integer keys (a node is its key's position), so
an n-gram never becomes a string and one whose start the vocabulary lacks stays unknown. Words
and word pairs, a few dozen a message, are looked up by dict, pairs as tuples of the words.

``counts`` gives exactly what counting ``features()`` and keeping the known terms gives: the
same terms, the same counts, in the order each first appears there (character n-grams by size,
then words, then word pairs), so the model's sums and its reasons come out the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise, repeat

import numpy as np

# Sorts after every key: a search never runs off the end of a table.
_SENTINEL = np.iinfo(np.int64).max


class Vocabulary:
    """A model's terms (by column) and the tables that find them in a message."""

    def __init__(self, terms: dict[str, int], char_sizes: Sequence[int], word_prefix: str):
        self._by_term = terms
        self.terms: list[str] = [""] * len(terms)
        for term, column in terms.items():
            self.terms[column] = term
        self._char_sizes = frozenset(char_sizes)
        # A term of an n-gram's length may be one, a term with the prefix a word or a pair;
        # "w:ok" may be both, and both then count towards its one column, as in ``features``.
        grams = {term: column for term, column in terms.items() if len(term) in self._char_sizes}
        alphabet = sorted({char for term in grams for char in term})
        # A character outside the alphabet is its size: a digit no key has, so no n-gram with it
        # is found, and an unknown node (one past the last) only makes keys above every table's.
        self._base = np.int64(len(alphabet) + 1)
        self._ranks = np.full(ord(alphabet[-1]) + 2 if alphabet else 1, len(alphabet), dtype=np.int32)
        self._ranks[[ord(char) for char in alphabet]] = np.arange(len(alphabet), dtype=np.int32)
        self._levels, self._columns = _trie(grams, self._ranks, self._base, max(char_sizes))
        words = {term.removeprefix(word_prefix): column for term, column in terms.items()
                 if term.startswith(word_prefix)}
        self._words = {word: column for word, column in words.items() if " " not in word}
        self._pairs = {tuple(word.split(" ", 1)): column for word, column in words.items() if " " in word}

    def counts(self, text: str, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The columns of the known terms among ``text``'s character n-grams and ``words``'
        words and pairs, in order of first appearance, and how often each appears."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        characters = nodes = self._ranks[np.minimum(codes, len(self._ranks) - 1)]
        found = []
        for size, (table, columns) in enumerate(zip(self._levels, self._columns, strict=True), start=1):
            if size > 1:
                keys = nodes[:-1] * self._base + characters[size - 1:]
                positions = np.searchsorted(table, keys)
                nodes = np.where(table[positions] == keys, positions, len(table) - 1)
            if size in self._char_sizes:
                found.append(columns[nodes])
        found.append(np.fromiter(map(self._words.get, words, repeat(-1)), dtype=np.int64, count=len(words)))
        found.append(np.fromiter(map(self._pairs.get, pairwise(words), repeat(-1)), dtype=np.int64,
                                 count=max(len(words) - 1, 0)))
        return first_counts(np.concatenate(found))

    def counted(self, terms: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """What ``counts`` gives, from the terms as strings: for a short text, a few dozen
        strings cost less than the numpy calls that avoid them."""
        counted = Counter(terms)
        found = np.fromiter(map(self._by_term.get, counted, repeat(-1)), dtype=np.int64, count=len(counted))
        known = found >= 0
        return found[known], np.fromiter(counted.values(), dtype=np.int64, count=len(counted))[known]


def first_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct non-negative values in order of first appearance, and how often each
    appears: ``Counter(values)`` less -1, in numpy calls instead of a Python object a value.
    Sorts only (no argsort, three times slower here): a value sorted with its position below
    it, ``value × len(values) + position``, puts each value's first appearance first."""
    where = np.flatnonzero(values >= 0)
    if not len(where):
        return where, where
    keyed = np.sort(values[where] * len(values) + where)
    distinct = keyed // len(values)
    ends = np.append(np.flatnonzero(distinct[1:] != distinct[:-1]) + 1, len(keyed))
    starts = np.concatenate(([0], ends[:-1]))
    counts = ends - starts
    # The same again on first position × number of values + rank, to put them in reading order.
    ranks = np.sort(keyed[starts] % len(values) * len(starts) + np.arange(len(starts))) % len(starts)
    return distinct[starts][ranks], counts[ranks]


def _trie(grams: dict[str, int], ranks: np.ndarray, base: np.int64, depth: int) -> tuple[list[np.ndarray],
                                                                                    list[np.ndarray]]:
    """For each length 1..depth, the sorted keys of the terms' prefixes of that length, made as
    ``counts`` makes an n-gram's (a prefix's node is its key's position; length 1 is a rank, its
    table empty) and, by node, the column of the prefix when it is a term itself (-1 if not)."""
    lengths = np.fromiter(map(len, grams), dtype=np.int64, count=len(grams))
    found = np.fromiter(grams.values(), dtype=np.int64, count=len(grams))
    padded = "".join(term.ljust(depth) for term in grams).encode("utf-32-le", "surrogatepass")
    characters = ranks[np.minimum(np.frombuffer(padded, dtype=np.uint32), len(ranks) - 1)].reshape(-1, depth)
    nodes = characters[:, 0].astype(np.int64)
    levels, columns = [_table(np.empty(0, dtype=np.int64))], [_columns(nodes, lengths == 1, found, int(base))]
    for size in range(2, depth + 1):
        longer = lengths >= size
        table, nodes[longer] = np.unique(nodes[longer] * base + characters[longer, size - 1], return_inverse=True)
        levels.append(_table(table))
        columns.append(_columns(nodes, lengths == size, found, len(table) + 1))
    return levels, columns


def _table(keys: np.ndarray) -> np.ndarray:
    return np.append(keys, _SENTINEL)


def _columns(nodes: np.ndarray, ending: np.ndarray, found: np.ndarray, size: int) -> np.ndarray:
    """By node, the column of the term that ends there; -1 where none does, and for the
    unknown node (the last)."""
    columns = np.full(size, -1, dtype=np.int64)
    columns[nodes[ending]] = found[ending]
    return columns
