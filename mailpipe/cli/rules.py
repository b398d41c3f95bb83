"""``mailpipe score``, ``rules test``, ``rules eval`` and ``learn``: urgency explained and taught.

``score`` runs a message through the same context, rules and model as the daemon (with the
customer's history when the daemon's store knows the sender, and judged at the message's own
Date; a message saved from an agent's mailbox is judged without our tag and headers).
``rules test`` runs every rule's example; ``rules eval`` shows per-level precision and recall
of the rules, the model and both on labelled mail; ``learn`` is the lead's correction of a case
(or of saved messages) from the shell, the same as ``urgency+LEVEL@`` by mail. Commands that
need the model train it first, which takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mailpipe import config as configuration
from mailpipe.cli import urgency
from mailpipe.cli.common import Commands
from mailpipe.deliver.headers import as_received
from mailpipe.message import ParsedMessage, parse
from mailpipe.store import CONTACTS_DAYS, CONTACTS_KEPT
from mailpipe.store.backends import open_store
from mailpipe.store.sql import SQLStore
from mailpipe.triage import examples, learning
from mailpipe.triage import load as triage_load
from mailpipe.triage.context import triage_context
from mailpipe.triage.model import UrgencyModel
from mailpipe.triage.rules import RuleSet
from mailpipe.triage.score import evaluate


def score(commands: Commands, common: argparse.ArgumentParser) -> None:
    score = commands.add_parser("score", parents=[common], help="explain the urgency score of messages")
    score.add_argument("files", nargs="+", metavar="FILE", help="message files, or - for standard input")
    score.add_argument("--json", action="store_true", help="one JSON object per line, per message")
    score.add_argument("--no-model", action="store_true", help="keyword rules alone (no training wait)")
    score.set_defaults(run=_score)


def _score(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    ruleset = triage_load.ruleset(loaded.triage)
    store = open_store(loaded) if loaded.store.url or loaded.store_path.exists() else None
    try:
        model = None if args.no_model else learning.trained(loaded.triage, store)
        for name in args.files:
            _score_one(name, args.json, loaded, ruleset, store, model)
    finally:
        if store is not None:
            store.close()
    return 0


def _score_one(name: str, as_json: bool, loaded: configuration.Config, ruleset: RuleSet,
               store: SQLStore | None, model: UrgencyModel | None) -> None:
    """One message, with the customer's context when the daemon's store knows the sender."""
    raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    started = time.perf_counter()
    parsed = received(raw)
    moment = parsed.date if parsed.date and parsed.date.tzinfo else datetime.now(UTC)
    profile = store.profile(parsed.sender, moment.timestamp()) if store is not None and parsed.sender else None
    verdict = evaluate(ruleset, triage_context(parsed, profile, moment, loaded.triage, loaded.inbound.hostname,
                                               model=model))
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
    urgency.add_eval(rules_command, common)


def received(raw: bytes) -> ParsedMessage:
    """The message as its customer sent it, also when it was saved from an agent's mailbox."""
    return parse(as_received(raw, parse(raw).subject))


def _rules_test(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    ruleset = triage_load.ruleset(loaded.triage)
    checked, failures = examples.run(ruleset, learning.trained(loaded.triage, None))
    for failure in failures:
        want = "fire" if failure.expected else "not fire"
        print(f"{failure.source}: rule {failure.rule}: examples[{failure.index}] should {want}: "
              f"{json.dumps(failure.example, ensure_ascii=False)}", file=sys.stderr)
    print(f"{checked} examples in {len(ruleset.rules)} rules: "
          + (f"{len(failures)} failed" if failures else "all pass"))
    return 1 if failures else 0
