"""The rules a config names: the shipped (or configured) set with the operator's override layer."""

from __future__ import annotations

from pathlib import Path

from mailpipe.config import TriageConfig
from mailpipe.triage import rules


def ruleset(settings: TriageConfig) -> rules.RuleSet:
    overrides = Path(settings.rules_overrides) if settings.rules_overrides else None
    return rules.load(settings.rules_path, overrides)
