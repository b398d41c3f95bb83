"""Every remote SMTP answer, classified by provider and class, from a catalog kept as data.

The catalog is ``monitors/replies.toml`` (shipped) plus any ``*.toml`` in the override
directory, whose entries are tried first (``configured``). A provider (``mailpipe.providers``,
and any ``[providers.NAME]`` an override file adds) is recognised by its MX host names (or, for
mail relayed through a smarthost, by the recipient's domain). Each entry carries real texts as
examples, and loading refuses one whose own pattern does not match them. A reply from a
recognised provider that no entry explains is ``unknown``: a text never seen before is how a
provider's new rule first shows, so the caller logs it whole. Replies from anybody else fall
back to the class their RFC 3463 enhanced status code implies. ``split_reply`` reads a reply
as an operator pastes it or a bounce quotes it. Pure: no I/O but reading the files.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailpipe import data
from mailpipe.errors import Problems
from mailpipe.providers import OTHER, PROVIDERS, Provider

CLASSES = ("authentication", "reputation", "content", "recipient", "policy", "other")
ACCEPTED, UNKNOWN, OTHER_PROVIDER = "accepted", "unknown", OTHER
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# RFC 3463 subjects: addressing, mailbox, mail system, network, protocol, content, security.
_BY_SUBJECT = {"1": "recipient", "2": "recipient", "3": "other", "4": "other", "5": "other", "6": "content",
               "7": "policy"}
_REPLY_KEYS = frozenset({"provider", "pattern", "class", "meaning", "action", "source", "since", "examples"})
# A reply as an operator pastes it or a bounce quotes it: "550-5.7.26 …", "550 5.7.1 …", "550; 5.7.515 …",
# "550: 5.7.1 …", or only the text (NDR tables, bounce bodies).
_CODE = re.compile(r"^\s*([2-5]\d\d)(?:[ \t;:-]+|$)")
_CONTINUATION = re.compile(r"^\s*[2-5]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}[ \t]+)?", re.MULTILINE)
_PROVIDER_KEYS = frozenset({"mx", "domains"})


class CatalogError(Problems):
    """Problems in the reply catalog."""


@dataclass(frozen=True)
class Known:
    provider: str
    pattern: re.Pattern[str]
    klass: str
    meaning: str
    source: str
    since: str = ""
    action: str = ""
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class Classification:
    provider: str
    klass: str
    meaning: str = ""
    entry: Known | None = None  # the catalog entry that matched: its source, date and action

    @property
    def unknown(self) -> bool:
        return self.klass == UNKNOWN


@dataclass(frozen=True)
class Catalog:
    providers: tuple[Provider, ...]
    entries: tuple[Known, ...]

    @property
    def provider_names(self) -> tuple[str, ...]:
        return (*(p.name for p in self.providers), OTHER_PROVIDER)

    def provider(self, mx_host: str | None, recipient_domain: str = "") -> str:
        """The provider behind an MX host name, else behind the recipient's domain."""
        host = (mx_host or "").rstrip(".").lower()
        domain = recipient_domain.lower()
        for candidate in self.providers:
            if host and any(host == s or host.endswith("." + s) for s in candidate.mx):
                return candidate.name
        for candidate in self.providers:
            if domain in candidate.domains:
                return candidate.name
        return OTHER_PROVIDER

    def classify(self, provider: str, code: int | None, text: str) -> Classification:
        """A reply's class; ``code`` None for a text quoted without its reply code."""
        if code is not None and 200 <= code < 300:
            return Classification(provider, ACCEPTED)
        flat = _flat(code, text)
        for scope in (provider, "*"):
            for entry in self.entries:
                if entry.provider == scope and entry.pattern.search(flat):
                    return Classification(provider, entry.klass, entry.meaning, entry)
        if provider != OTHER_PROVIDER:
            return Classification(provider, UNKNOWN)
        enhanced = _ENHANCED.search(flat)
        return Classification(provider, _BY_SUBJECT.get(enhanced[2], "other") if enhanced else "other")


def split_reply(reply: str) -> tuple[int | None, str]:
    """A reply as pasted or quoted, to its code (None when it has none) and its text. The
    continuation prefixes of a multi-line reply ("550-5.7.26 ") are dropped at line starts."""
    stripped = reply.strip()
    first = _CODE.match(stripped)
    if first is None:
        return None, " ".join(stripped.split())
    lines = stripped.splitlines()
    rest = [_CONTINUATION.sub("", line, count=1) for line in lines[1:]]
    text = " ".join(" ".join([lines[0][first.end():], *rest]).split())
    enhanced = _ENHANCED.match(text)
    if enhanced:  # a multi-line reply already joined on one line: "… 550-5.7.1 send email …"
        head, body = text[:enhanced.end()], text[enhanced.end():]
        text = head + re.sub(rf" {first[1]}[ -]{re.escape(enhanced[0])}(?= )", "", body)
    return int(first[1]), text


def _flat(code: int | None, text: str) -> str:
    """What patterns are searched in: "CODE TEXT" on one line, or the text alone."""
    return " ".join(text.split()) if code is None else f"{code} " + " ".join(text.split())


def configured(overrides: Path | None) -> Catalog:
    """The shipped catalog with a site's override directory (``outbound.replies_overrides``)."""
    return load(data.shipped("monitors") / "replies.toml", overrides)


def load(shipped: Path, overrides: Path | None = None) -> Catalog:
    """The override directory's files first (their entries win), then the shipped catalog.
    Every problem is collected and reported as ``file: where: reason``."""
    files = sorted(overrides.glob("*.toml")) if overrides and overrides.is_dir() else []
    problems: list[str] = []
    providers: dict[str, Provider] = {}
    entries: list[Known] = []
    for path in [*files, shipped]:
        data = _read(path, problems)
        for name, spec in data.get("providers", {}).items():
            if name not in providers:
                providers[name] = _provider(path, name, spec, problems)
        for index, spec in enumerate(data.get("replies", [])):
            entry = _entry(path, index, spec, problems)
            if entry is not None:
                entries.append(entry)
        for key in sorted(set(data) - {"providers", "replies"}):
            problems.append(f"{path}: {key}: unknown key")
    for known in PROVIDERS:  # mailpipe.providers, after any a site declares in its own files
        providers.setdefault(known.name, known)
    for entry in entries:
        if entry.provider != "*" and entry.provider not in providers:
            problems.append(f"{shipped}: provider {entry.provider!r} has replies but no [providers.{entry.provider}]")
    if problems:
        raise CatalogError(problems)
    return Catalog(tuple(providers.values()), tuple(entries))


def _read(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: TOML syntax: {exc}")
    return {}


def _provider(path: Path, name: str, spec: Any, problems: list[str]) -> Provider:
    where = f"{path}: providers.{name}"
    if not isinstance(spec, dict) or set(spec) - _PROVIDER_KEYS:
        problems.append(f"{where}: must be a table with only {', '.join(sorted(_PROVIDER_KEYS))}")
        return Provider(name, (), ())
    lists = {key: spec.get(key, []) for key in _PROVIDER_KEYS}
    if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists.values()):
        problems.append(f"{where}: mx and domains must be arrays of strings")
        return Provider(name, (), ())
    return Provider(name, tuple(x.lower() for x in lists["mx"]), tuple(x.lower() for x in lists["domains"]))


def _entry(path: Path, index: int, spec: Any, problems: list[str]) -> Known | None:
    where = f"{path}: replies[{index}]"
    if not isinstance(spec, dict):
        problems.append(f"{where}: must be a table")
        return None
    for key in sorted(set(spec) - _REPLY_KEYS):
        problems.append(f"{where}: {key}: unknown key")
    missing = [key for key in ("provider", "pattern", "class", "meaning") if not isinstance(spec.get(key), str)]
    if missing:
        problems.append(f"{where}: {', '.join(missing)}: missing or not a string")
        return None
    if spec["class"] not in CLASSES:
        problems.append(f"{where}: class: {spec['class']!r} is not one of {', '.join(CLASSES)}")
        return None
    try:
        pattern = re.compile(spec["pattern"], re.IGNORECASE)
    except re.error as exc:
        problems.append(f"{where}: pattern: {exc}")
        return None
    optional = {key: spec.get(key, "") for key in ("source", "since", "action")}
    examples = spec.get("examples", [])
    if not all(isinstance(v, str) for v in optional.values()) or not isinstance(examples, list) \
            or not all(isinstance(x, str) for x in examples):
        problems.append(f"{where}: source, since and action must be strings, examples an array of strings")
        return None
    for example in examples:
        if not pattern.search(_flat(*split_reply(example))):
            problems.append(f"{where}: examples: the pattern does not match {example[:60]!r}")
    return Known(spec["provider"], pattern, spec["class"], spec["meaning"], optional["source"], optional["since"],
                 optional["action"], tuple(examples))
