"""Boolean expressions over rule names for composite rules: ``A & (B | !C)``.

A tiny recursive-descent parser (``!`` binds tightest, then ``&``, then ``|``) that turns the
text into a function of the set of rule names that fired, and reports the names it uses so
the loader can check they exist and order composites without cycles.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Predicate = Callable[[frozenset[str]], bool]
_TOKEN = re.compile(r"\s*(?:([A-Z][A-Z0-9_]*)|(&&?|\|\|?|!|\(|\)|and\b|or\b|not\b))", re.IGNORECASE)


class ExpressionError(ValueError):
    pass


def compile_expression(text: str) -> tuple[Predicate, frozenset[str]]:
    tokens = _tokenize(text)
    names: set[str] = set()
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ExpressionError(f"unexpected end of expression {text!r}")
        position += 1
        return tokens[position - 1]

    def either() -> Predicate:
        left = both()
        while peek() in ("|", "||", "or", "OR"):
            take()
            right = both()
            left = (lambda a, b: lambda fired: a(fired) or b(fired))(left, right)
        return left

    def both() -> Predicate:
        left = negation()
        while peek() in ("&", "&&", "and", "AND"):
            take()
            right = negation()
            left = (lambda a, b: lambda fired: a(fired) and b(fired))(left, right)
        return left

    def negation() -> Predicate:
        if peek() in ("!", "not", "NOT"):
            take()
            inner = negation()
            return lambda fired: not inner(fired)
        token = take()
        if token == "(":
            inner = either()
            if take() != ")":
                raise ExpressionError(f"missing ) in {text!r}")
            return inner
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", token):
            raise ExpressionError(f"expected a rule name, got {token!r} in {text!r}")
        names.add(token)
        return lambda fired: token in fired

    predicate = either()
    if position != len(tokens):
        raise ExpressionError(f"unexpected {tokens[position]!r} in {text!r}")
    return predicate, frozenset(names)


def _tokenize(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match:
            raise ExpressionError(f"cannot read {text[position:]!r}")
        tokens.append(match[1] or match[2])
        position = match.end()
    return tokens
