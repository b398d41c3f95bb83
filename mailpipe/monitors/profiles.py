"""Provider requirement profiles (``monitors/providers/*.toml``), evaluated against what we know.

A profile lists a provider's published requirements, each with its date and source, as
prefixes of check names that must pass (``all``) or of which one must pass (``any``). The
facts come from the DNS checks and from the daemon's own outgoing traffic. A requirement whose
checks do not exist (no sending IPs configured, no mail sent to the provider lately) is
*unknown*, not failed: a gauge that claims a failure nobody can see would page people for
nothing. Some requirements rest on data mailpipe never sees (the spam rate in Google's
Postmaster Tools or Yahoo's complaint feedback loop): ``unknown_without`` names what would
supply it, and such a requirement is always unknown, never passed.

``enforcement`` lists how the provider acts on a failure and since when, in date order
(``{ from = "2024-02-01", action = "deferral" }, { from = "2025-11-01", action = "rejection" }``
is Gmail's move from deferring to rejecting), so ``doctor`` says what a failure costs today.
Loading never half-succeeds: every problem names the file, requirement and key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailpipe.errors import Problems

_REQUIREMENT_KEYS = frozenset({"id", "description", "scope", "since", "source", "all", "any", "enforcement",
                               "unknown_without"})
_STAGE_KEYS = frozenset({"from", "action", "detail"})
ACTIONS = ("none", "warning", "junk", "deferral", "rejection", "no_mitigation")
_DATE = re.compile(r"^\d{4}-\d{2}(?:-\d{2})?$")
_PROFILE_KEYS = frozenset({"provider", "name", "source", "requirements"})


class ProfileError(Problems):
    """Problems in the provider requirement profiles."""


@dataclass(frozen=True)
class Stage:
    """From ``start`` (YYYY-MM or YYYY-MM-DD) the provider acts on a failure by ``action``."""

    start: str
    action: str  # one of ACTIONS
    detail: str


@dataclass(frozen=True)
class Requirement:
    id: str
    description: str
    scope: str  # all | bulk
    since: str
    source: str
    all_of: tuple[str, ...]
    any_of: tuple[str, ...]
    enforcement: tuple[Stage, ...] = ()
    unknown_without: str = ""  # what would supply data mailpipe cannot see

    def enforced(self, today: str) -> Stage | None:
        """The stage in force on ``today`` (YYYY-MM-DD); None before the first."""
        current = [stage for stage in self.enforcement if stage.start <= today]
        return current[-1] if current else None


@dataclass(frozen=True)
class Profile:
    key: str  # the file's name: gmail, yahoo, outlook
    provider: str  # the reply catalog's name for it: google, yahoo, microsoft
    name: str
    requirements: tuple[Requirement, ...]


@dataclass(frozen=True)
class Outcome:
    requirement: Requirement
    ok: bool | None  # None: nothing to judge it by yet
    detail: str


def load(directory: Path) -> tuple[Profile, ...]:
    problems: list[str] = []
    profiles = []
    for path in sorted(directory.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        profiles.append(_profile(path, data, problems))
    if not profiles and not problems:
        problems.append(f"{directory}: no provider profiles (*.toml)")
    if problems:
        raise ProfileError(problems)
    return tuple(profiles)


def _profile(path: Path, data: dict[str, Any], problems: list[str]) -> Profile:
    for key in sorted(set(data) - _PROFILE_KEYS):
        problems.append(f"{path}: {key}: unknown key")
    if not isinstance(data.get("provider"), str):
        problems.append(f"{path}: provider: missing (the reply catalog's provider name, e.g. google)")
    requirements = []
    seen: set[str] = set()
    for index, spec in enumerate(data.get("requirements", [])):
        where = f"{path}: requirements[{index}]"
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a table")
            continue
        where = f"{path}: requirement {spec.get('id', index)}"
        for key in sorted(set(spec) - _REQUIREMENT_KEYS):
            problems.append(f"{where}: {key}: unknown key")
        for key in ("id", "description", "since", "source"):
            if not isinstance(spec.get(key), str) or not spec.get(key):
                problems.append(f"{where}: {key}: missing or not a string")
        if spec.get("scope", "all") not in ("all", "bulk"):
            problems.append(f"{where}: scope: must be all or bulk")
        lists = {key: spec.get(key, []) for key in ("all", "any")}
        if not all(isinstance(v, list) and all(isinstance(x, str) and x for x in v) for v in lists.values()):
            problems.append(f"{where}: all and any must be arrays of check names")
            continue
        unknown_without = spec.get("unknown_without", "")
        if not isinstance(unknown_without, str):
            problems.append(f"{where}: unknown_without: must be a string (what would supply the data)")
            unknown_without = ""
        if not lists["all"] and not lists["any"] and not unknown_without:
            problems.append(f"{where}: needs all or any (or unknown_without)")
        if spec.get("id") in seen:
            problems.append(f"{where}: id: duplicate")
        seen.add(str(spec.get("id")))
        requirements.append(Requirement(str(spec.get("id")), str(spec.get("description")), spec.get("scope", "all"),
                                        str(spec.get("since")), str(spec.get("source")), tuple(lists["all"]),
                                        tuple(lists["any"]), _stages(where, spec.get("enforcement", []), problems),
                                        unknown_without))
    return Profile(path.stem, str(data.get("provider", "")), str(data.get("name", path.stem)), tuple(requirements))


def _stages(where: str, value: Any, problems: list[str]) -> tuple[Stage, ...]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        problems.append(f"{where}: enforcement: must be an array of {{ from, action, detail }} tables")
        return ()
    stages = []
    for index, item in enumerate(value):
        at = f"{where}: enforcement[{index}]"
        for key in sorted(set(item) - _STAGE_KEYS):
            problems.append(f"{at}: {key}: unknown key")
        if not isinstance(item.get("from"), str) or not _DATE.match(item["from"]):
            problems.append(f"{at}: from: must be a date, YYYY-MM-DD or YYYY-MM")
        if item.get("action") not in ACTIONS:
            problems.append(f"{at}: action: must be one of {', '.join(ACTIONS)}")
        stages.append(Stage(str(item.get("from")), str(item.get("action")), str(item.get("detail", ""))))
    if [s.start for s in stages] != sorted(s.start for s in stages):
        problems.append(f"{where}: enforcement: stages must be in date order")
    return tuple(stages)


def evaluate(profile: Profile, checks: Mapping[str, bool], *, bulk: bool) -> list[Outcome]:
    """``checks`` maps check names (DNS and traffic) to whether they pass."""
    outcomes = []
    for requirement in profile.requirements:
        if requirement.scope == "bulk" and not bulk:
            continue
        every = [_prefix(checks, p) for p in requirement.all_of]
        some = [_prefix(checks, p) for p in requirement.any_of]
        verdicts = [v for v, _ in every]
        if some:
            known = [v for v, _ in some if v is not None]
            verdicts.append(True if any(known) else (None if len(known) < len(some) else False))
        failing = [detail for v, detail in [*every, *some] if v is False]
        unknown = [detail for v, detail in [*every, *some] if v is None]
        if False in verdicts:
            outcomes.append(Outcome(requirement, False, "failing: " + ", ".join(failing)))
        elif requirement.unknown_without:
            outcomes.append(Outcome(requirement, None, "unknown to mailpipe: needs " + requirement.unknown_without))
        elif None in verdicts:
            outcomes.append(Outcome(requirement, None, "not known yet: " + ", ".join(unknown)))
        else:
            outcomes.append(Outcome(requirement, True, "met"))
    return outcomes


def _prefix(checks: Mapping[str, bool], prefix: str) -> tuple[bool | None, str]:
    matching = {name: ok for name, ok in checks.items() if name == prefix or name.startswith(prefix + ".")}
    if not matching:
        return None, prefix
    failed = sorted(name for name, ok in matching.items() if not ok)
    return (False, ", ".join(failed)) if failed else (True, prefix)


def combine(outcomes: Sequence[Outcome]) -> bool | None:
    """Several domains' outcomes of one requirement: failed if any failed, unknown if none known."""
    known = [o.ok for o in outcomes if o.ok is not None]
    if not known:
        return None
    return all(known)
