"""A DMARC record read by the grammar of RFC 7489 section 6.4, for inbound DMARC and ``doctor``.

Pure: takes the TXT string, returns the tags and what is wrong, and never raises (the DNS
query is the caller's). The rules, each from the RFC:

- ``v=DMARC1`` comes first; ``v`` and ``DMARC1`` are matched exactly (6.3: "MUST match
  precisely"), with optional whitespace around ``=`` and around each ``;`` (``dmarc-sep`` and
  ``*WSP "=" *WSP`` in the ABNF), so ``v = DMARC1; p=reject`` is a record.
- ``p`` is required (none, quarantine, reject); ``sp`` takes the same values; ``adkim`` and
  ``aspf`` are ``r`` or ``s``; ``pct`` is 0–100; ``ri`` a 32-bit unsigned integer; ``fo`` a
  colon-separated list of ``0``, ``1``, ``d``, ``s``; ``rf`` a colon-separated list of report
  formats; ``rua``/``ruf`` comma-separated URIs with a scheme (``mailto:a@b``) and an optional
  ``!size[kmgt]``: ``rua=reports@example.com`` has no scheme and is refused.
- Unknown tags are ignored (6.3: "Unknown tags MUST be ignored"); a tag given twice is an error.
- Keywords are case-insensitive (ABNF quoted strings); values come back lowercased except the
  report URIs, whose local parts may be case-sensitive.

``doctor`` reports every error; inbound verification uses ``Record.applied``, what a receiver
makes of a flawed record (6.3: bad values give way to defaults; 6.6.3: p=none without a valid p
when a usable ``rua`` remains).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WSP = "[ \t]"
_VERSION = re.compile(rf"^v{_WSP}*={_WSP}*DMARC1{_WSP}*(?:;|$)")
# Applied to a part already stripped of blanks: a lazy value before trailing blanks, or blanks
# on either side of a separator matched by regex, backtrack quadratically over a run of blanks
# (16,000 of them in one tag held a thread, and the GIL, for over a second).
_TAG = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*)$", re.DOTALL)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s!,]+(?:![0-9]+[kmgtKMGT]?)?$")
_POLICIES = ("none", "quarantine", "reject")
_ALIGNMENT = ("r", "s")
_FAILURE_OPTIONS = ("0", "1", "d", "s")
_URI_TAGS = ("rua", "ruf")
_MAX_RI = 2**32 - 1


@dataclass(frozen=True)
class Record:
    """A record's tags (known ones validated) and its errors; valid when there are none."""

    tags: dict[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    invalid: frozenset[str] = frozenset()  # known tags whose values are wrong

    @property
    def valid(self) -> bool:
        return not self.errors

    def applied(self) -> dict[str, str] | None:
        """The tags a receiver applies (RFC 7489 6.3, 6.6.3): wrong values other than p's are
        ignored in favour of the defaults; a wrong or missing p makes it p=none when a usable
        rua remains, and no record at all otherwise."""
        usable = {name: value for name, value in self.tags.items() if name not in self.invalid}
        if "p" in usable:
            return usable
        return {**usable, "p": "none"} if "rua" in usable else None


def is_dmarc(text: str) -> bool:
    """Whether a TXT string at ``_dmarc.<domain>`` is meant as a DMARC record (its version tag)."""
    return bool(_VERSION.match(text))


def parse_record(text: str) -> Record:
    """The tags of a DMARC record and every error in it (never raises)."""
    if not is_dmarc(text):
        return Record(errors=("does not start with v=DMARC1",))
    errors: list[str] = []
    tags: dict[str, str] = {}
    for part in (part.strip(" \t") for part in text.split(";")[1:]):
        if not part:
            continue  # a trailing or doubled separator: tolerated, as receivers do
        match = _TAG.match(part)
        if not match:
            errors.append(f"{part!r} is not tag=value")
            continue
        name, value = match[1].lower(), match[2]
        if name in tags:
            errors.append(f"{name}: given twice")
            continue
        tags[name] = value if name in _URI_TAGS else value.lower()
    if "p" not in tags:
        errors.append("p: missing (none, quarantine or reject)")
    invalid = set()
    for name, value in tags.items():
        problem = _check(name, value)
        if problem:
            errors.append(f"{name}={value}: {problem}")
            invalid.add(name)
    return Record(tags, tuple(errors), frozenset(invalid))


def _check(name: str, value: str) -> str:
    """What is wrong with a known tag's value; "" when it is right or the tag is unknown."""
    if name in ("p", "sp"):
        return "" if value in _POLICIES else "must be none, quarantine or reject"
    if name in ("adkim", "aspf"):
        return "" if value in _ALIGNMENT else "must be r (relaxed) or s (strict)"
    if name == "pct":
        return "" if value.isdigit() and len(value) <= 3 and int(value) <= 100 else "must be 0 to 100"
    if name == "ri":
        return "" if value.isdigit() and int(value) <= _MAX_RI else "must be a number of seconds"
    if name == "fo":
        known = all(option.strip(" \t") in _FAILURE_OPTIONS for option in value.split(":"))
        return "" if known else "must be 0, 1, d or s (colon-separated)"
    if name == "rf":
        return "" if all(re.fullmatch(r"[a-z][a-z0-9-]*", f.strip(" \t")) for f in value.split(":")) else \
            "must be report formats such as afrf"
    if name in _URI_TAGS:
        bad = [uri for uri in (u.strip(" \t") for u in value.split(",")) if not _URI.match(uri)]
        return f"{', '.join(bad) or '(empty)'} is not a URI (e.g. mailto:reports@example.com)" if bad else ""
    return ""
