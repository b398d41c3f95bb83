"""``mailpipe score`` and ``mailpipe rules test``: the urgency rules explained, like ``rspamc``.

``score`` runs a message through the same context and scoring as the daemon (with the
customer's history when the daemon's store knows the sender); ``rules test`` runs every rule's
examples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mailpipe import config as configuration
from mailpipe.cli.common import Commands
from mailpipe.message import parse
from mailpipe.store import CONTACTS_DAYS, CONTACTS_KEPT
from mailpipe.store.backends import open_store
from mailpipe.store.sql import SQLStore
from mailpipe.triage import examples
from mailpipe.triage import load as triage_load
from mailpipe.triage.context import triage_context
from mailpipe.triage.rules import RuleSet
from mailpipe.triage.score import evaluate


def score(commands: Commands, common: argparse.ArgumentParser) -> None:
    score = commands.add_parser("score", parents=[common], help="explain the urgency score of messages")
    score.add_argument("files", nargs="+", metavar="FILE", help="message files, or - for standard input")
    score.add_argument("--json", action="store_true", help="one JSON object per line, per message")
    score.set_defaults(run=_score)


def _score(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    ruleset = triage_load.ruleset(loaded.triage)
    store = open_store(loaded) if loaded.store.url or loaded.store_path.exists() else None
    try:
        for name in args.files:
            _score_one(name, args.json, loaded, ruleset, store)
    finally:
        if store is not None:
            store.close()
    return 0


def _score_one(name: str, as_json: bool, loaded: configuration.Config, ruleset: RuleSet,
               store: SQLStore | None) -> None:
    """One message, with the customer's context when the daemon's store knows the sender."""
    raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    started = time.perf_counter()
    parsed = parse(raw)
    moment = parsed.date if parsed.date and parsed.date.tzinfo else datetime.now(UTC)
    profile = store.profile(parsed.sender, moment.timestamp()) if store is not None and parsed.sender else None
    verdict = evaluate(ruleset, triage_context(parsed, profile, moment, loaded.triage, loaded.inbound.hostname))
    elapsed = time.perf_counter() - started
    if as_json:
        print(json.dumps({"file": name, "score": verdict.score, "level": verdict.level, "escalate": verdict.escalate,
                          "subject": parsed.subject, "customer_known": profile is not None,
                          "rules": [{"name": h.name, "score": h.score, "description": h.description,
                                     "matched": h.matched} for h in verdict.hits]}, ensure_ascii=False))
        return
    print(f"Results for file: {name} ({elapsed:.3f} seconds)")
    print(f"[Level]: {verdict.level}")
    print(f"[Score]: {verdict.score:g} / {ruleset.levels['critical']:g}")
    print(f"[Subject]: {parsed.subject}")
    if profile is not None:
        known = profile.customer
        print(f"[Customer]: {known.address} (VIP={known.vip}, plan={known.plan or '-'}, "
              f"{len(profile.contacts)}{'+' if len(profile.contacts) == CONTACTS_KEPT else ''} contacts"
              f" in {CONTACTS_DAYS} days)")
    for hit in verdict.hits:
        print(f"Symbol: {hit.name} ({hit.score:.2f})[{hit.matched}]")
    if verdict.escalate:
        print(f"Escalate: {verdict.escalate}")
    print()


def rules(commands: Commands, common: argparse.ArgumentParser) -> None:
    rules_command = commands.add_parser("rules", help="urgency rules").add_subparsers(metavar="ACTION")
    rules_command.add_parser("test", parents=[common], help="check every rule's examples").set_defaults(
        run=_rules_test)


def _rules_test(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    ruleset = triage_load.ruleset(loaded.triage)
    checked, failures = examples.run(ruleset)
    for failure in failures:
        want = "fire" if failure.expected else "not fire"
        print(f"{failure.source}: rule {failure.rule}: examples[{failure.index}] should {want}: "
              f"{json.dumps(failure.example, ensure_ascii=False)}", file=sys.stderr)
    print(f"{checked} examples in {len(ruleset.rules)} rules: "
          + (f"{len(failures)} failed" if failures else "all pass"))
    return 1 if failures else 0
