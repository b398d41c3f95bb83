"""How the config's TOML becomes typed values: the type-driven conversion behind ``config.load``.

``convert`` walks a dataclass's type hints and builds it from a TOML table, appending one
problem per bad key (``file: dotted.key: reason``) instead of raising, so every mistake is
reported at once. Besides str, int, bool, tuples, Literal choices and nested dataclasses it
knows three types of its own: ``Seconds`` (30, "30s", "5m", "2h", "5d"), ``Bytes`` (1048576,
"25MiB", "1M") and ``Endpoint`` (HOST:PORT, an IP address or localhost). Checks that span
several keys are not here but in ``config._check``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "KI": 1024, "MI": 1024**2, "GI": 1024**3}


class Seconds(float):
    """A duration; config accepts 30, "30s", "5m", "2h" or "5d"."""


class Bytes(int):
    """A size; config accepts 1048576, "1MiB" or "1M"."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def convert(kind: Any, value: Any, key: str, source: str, problems: list[str]) -> Any:
    """Build ``kind`` from TOML ``value``, appending a problem per bad key instead of raising."""

    def bad(reason: str) -> None:
        problems.append(f"{source}: {key or '(top level)'}: {reason}")

    origin = typing.get_origin(kind)
    if kind is Endpoint:
        return _endpoint(value, bad)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            return bad("must be a table")
        hints = typing.get_type_hints(kind)
        fields = {f.name: f for f in dataclasses.fields(kind) if f.name != "source"}
        for unknown in sorted(set(value) - set(fields)):
            problems.append(f"{source}: {_join(key, unknown)}: unknown key")
        args = {}
        for name, spec in fields.items():
            if name in value:
                args[name] = convert(hints[name], value[name], _join(key, name), source, problems)
            elif spec.default is dataclasses.MISSING:
                problems.append(f"{source}: {_join(key, name)}: missing")
        try:
            return kind(**args)
        except TypeError:
            return None
    if origin is tuple:
        if not isinstance(value, list):
            return bad("must be an array")
        (item,) = [a for a in typing.get_args(kind) if a is not Ellipsis]
        return tuple(convert(item, v, f"{key}[{i}]", source, problems) for i, v in enumerate(value))
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            return bad(f"{value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        return bad("unsupported type")
    return _scalar(kind, value, bad)


def _scalar(kind: Any, value: Any, bad: Any) -> Any:
    if kind is Seconds:
        match = _DURATION.match(str(value)) if isinstance(value, (int, float, str)) else None
        if not match or isinstance(value, bool):
            return bad(f"{value!r} is not a duration (e.g. 30, \"30s\", \"5m\", \"5d\")")
        return Seconds(float(match[1]) * _DURATION_UNITS[match[2]])
    if kind is Bytes:
        match = _SIZE.match(str(value)) if isinstance(value, (int, str)) else None
        if not match or isinstance(value, bool):
            return bad(f"{value!r} is not a size (e.g. 1048576, \"25MiB\")")
        unit = (match[2] or "").upper().rstrip("B")
        return Bytes(int(match[1]) * _SIZE_UNITS[unit])
    if kind is bool:
        return value if isinstance(value, bool) else bad(f"{value!r} is not true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return bad(f"{value!r} is not a non-negative integer")
        return value
    if kind is str:
        if not isinstance(value, str):
            return bad(f"{value!r} is not a string")
        if any(ch in value for ch in "\r\n\0"):
            return bad("must not contain line breaks or NUL (header injection)")
        return value
    return bad(f"unsupported type {kind!r}")


def _endpoint(value: Any, bad: Any) -> Endpoint | None:
    match = re.match(r"^\[?([^\]]+?)\]?:(\d{1,5})$", value) if isinstance(value, str) else None
    if not match or not 0 < int(match[2]) < 65536:
        return bad(f"{value!r} is not HOST:PORT")
    host = match[1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            return bad(f"{host!r} is not an IP address (or localhost)")
    return Endpoint(host, int(match[2]))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
