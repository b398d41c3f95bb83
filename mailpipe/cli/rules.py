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
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from mailpipe import config as configuration
from mailpipe.cli import urgency
from mailpipe.cli.common import Commands, complain, json_line
from mailpipe.deliver.headers import received
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
    listing = rules_command.add_parser("list", parents=[common], help="every rule in force: name, score, description")
    listing.add_argument("--json", action="store_true", help="one JSON object per rule")
    listing.set_defaults(run=_rules_list)
    showing = rules_command.add_parser("show", parents=[common], help="one rule as written, with its file")
    showing.add_argument("name", metavar="NAME", help="the rule's name, e.g. NOT_DELIVERED")
    showing.set_defaults(run=_rules_show)
    urgency.add_eval(rules_command, common)


def _rules_list(args: argparse.Namespace) -> int:
    ruleset = triage_load.ruleset(configuration.load(args.config).triage)
    for rule in sorted(ruleset.rules, key=lambda r: (-r.score, r.name)):
        if args.json:
            json_line({"name": rule.name, "score": rule.score, "description": rule.description,
                       "escalate": rule.escalate, "composite": rule.expression is not None, "source": rule.source})
            continue
        escalate = f"  [{rule.escalate}]" if rule.escalate else ""
        print(f"{rule.name:<28} {rule.score:>6g}  {rule.description}{escalate}")
    if not args.json:
        print(f"{len(ruleset.rules)} rules; levels: " + ", ".join(f"{k} >= {v:g}" for k, v in ruleset.levels.items()))
    return 0


def _rules_show(args: argparse.Namespace) -> int:
    """The rule's table as its file has it (after overrides: each file that defines it, in order)."""
    ruleset = triage_load.ruleset(configuration.load(args.config).triage)
    rule = next((r for r in ruleset.rules if r.name == args.name.upper()), None)
    if rule is None:
        complain(f"rules: {args.name}: no such rule (mailpipe rules list names them)")
        return 1
    print(f"{rule.name} (score {rule.score:g}, {len(rule.examples)} examples) from {rule.source}")
    for source in dict.fromkeys([*ruleset.sources, rule.source]):
        path = Path(source)
        tables = tomllib.loads(path.read_text("utf-8")).get("rule", []) if path.is_file() else []
        for table in (t for t in tables if t.get("name") == rule.name):
            print(f"# {path}")
            print("[[rule]]")
            for key, value in table.items():
                print(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return 0


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


EXAMPLES = {
    "score": ("mailpipe score message.eml", "mailpipe score --json var/mailboxes/yamada/new/*",
              "mailpipe score - < message.eml"),
    "rules test": ("mailpipe rules test", "mailpipe rules test --config /etc/mailpipe/mailpipe.toml"),
    "rules list": ("mailpipe rules list", "mailpipe rules list --json | jq -r .name"),
    "rules show": ("mailpipe rules show NOT_DELIVERED", "mailpipe rules show vip"),
}
