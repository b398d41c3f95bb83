"""``mailpipe``: the daemon and the operator's commands, in the manner of postqueue/postsuper.

    mailpipe serve [--config PATH]
    mailpipe check-config [PATH]            the config and the rules it names
    mailpipe score [--json] FILE...|-       explain a message's urgency, like rspamc
    mailpipe rules test                     run every rule's examples (with the urgency model)
    mailpipe rules list [--json] | show NAME   the rules in force; one rule as written
    mailpipe rules eval [LABELLED...] [--folds K] [--json]   precision and recall: rules, model, both
    mailpipe learn --level LEVEL CASE-ID|FILE...   correct a case's urgency, or teach saved messages
    mailpipe customers import FILE.csv      create or update customers (address,name,company,plan,vip,phone,notes)
    mailpipe customers show ADDRESS|PHONE   profile and case history; by phone: who is calling
    mailpipe cases list [--open] [--json]   cases, newest first
    mailpipe cases show ID [--json]         a case's timeline: messages, replies with their fates, notes
    mailpipe cases note ID TEXT --by AGENT  a note on a case (a phone call)
    mailpipe cases close ID... | reopen ID...
    mailpipe agents list [--json]           roster: tier, phone, on duty now, open cases
    mailpipe agents away ID | back ID       take an agent out of (or back into) assignment
    mailpipe agents passwd ID [--password-stdin]   set the agent's submission password
    mailpipe stamp --owner ID FILE|-        preview what a customer gets: the stamped reply
    mailpipe dkim keygen --domain D --selector S [--algorithm A] [--bits N] [--directory DIR]
    mailpipe dmarc import FILE... [--json]  DMARC aggregate reports (XML, .gz, .zip or the e-mail)
    mailpipe incidents [--days N] [--json]  providers refusing our mail, now and lately, with the customers hit
    mailpipe replies explain [--mx HOST | --provider NAME] [--json] TEXT|-
                                            what a remote server's reply means and what to do
    mailpipe store migrate                  create or upgrade the store's schema (SQLite or PostgreSQL)
    mailpipe store export FILE | import FILE   every row as JSON lines: to move SQLite to PostgreSQL
    mailpipe doctor DOMAIN [--provider gmail] [--nameserver HOST:PORT] [--ip IP...] [--json]
                                            SPF, DKIM, DMARC, PTR, MX and a provider's requirements
    mailpipe queue list [--json]            like postqueue -p
    mailpipe queue show ID                  like postcat -q: envelope, then the message
    mailpipe queue flush                    like postqueue -f: retry deferred mail now
    mailpipe queue hold ID...|ALL           like postsuper -h
    mailpipe queue release ID...|ALL        like postsuper -H; also retries quarantined mail
    mailpipe queue delete ID...|ALL         like postsuper -d
    mailpipe help [COMMAND...] [--man]      a command's help with examples; mailpipe(8) as roff

Queue commands work on the spool files directly, with or without a running daemon; the daemon
picks up what they change within a second. Every command finds the state as the daemon does
(``Config.state_search``) and a reading command creates nothing. Exit status: 0 success, 1
failure or not found, 2 usage, 141 when the reader of the output went away; the problems of a
broken config, rules file, reply catalog or provider profile (``errors.Problems``) are printed
one a line.

This module holds ``serve`` and ``check-config`` and the order of the commands in ``--help``;
each family of commands lives in its own module, its help text beside it: ``rules`` (score,
rules test), ``desk`` (customers, cases, agents, stamp), ``deliverability`` (doctor, dkim,
dmarc, incidents), ``replies`` (explain), ``urgency`` (rules eval, learn), ``store`` and ``queue``;
``common`` is the output they share; ``manual`` turns the families' ``EXAMPLES`` and the parser
into ``--help`` epilogs and mailpipe(8).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mailpipe import __version__
from mailpipe import config as configuration
from mailpipe.cli import deliverability, desk, manual, queue, replies, rules, store, urgency
from mailpipe.cli.common import SERVICE_USER, Commands, complain
from mailpipe.config import desk as desk_config
from mailpipe.errors import Problems
from mailpipe.outbound import classify
from mailpipe.store import StoreError, StoreUnavailable
from mailpipe.triage import corpus
from mailpipe.triage import load as triage_load
from mailpipe.triage.conditions import LEVELS
from mailpipe.triage.model import enough

EXAMPLES = {
    "serve": ("mailpipe serve                                  # the quick start: ./var, loopback ports",
              "mailpipe serve --config /etc/mailpipe/mailpipe.toml",
              "systemctl start mailpipe                        # in production: the unit runs serve"),
    "check-config": ("mailpipe check-config                           # /etc/mailpipe/mailpipe.toml",
                     "mailpipe check-config /etc/mailpipe/mailpipe.toml.new && systemctl reload mailpipe"),
    "help": ("mailpipe help queue list", "mailpipe help --man > mailpipe.8 && man -l mailpipe.8"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    if args.run is None:
        return manual.run_help(parser, args, __version__)
    try:
        status = int(args.run(args))
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (``queue list --json | head``): say nothing, and exit as a C tool
        # killed by SIGPIPE would (128 + 13). Python flushes stdout again at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Problems as exc:
        for problem in exc.problems:
            complain(problem)
        return 1
    except (RuntimeError, OSError, StoreError, StoreUnavailable) as exc:
        complain(str(exc))
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailpipe", description="Support-mail and deliverability daemon.")
    parser.add_argument("--version", action="version", version=f"mailpipe {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="config file (default /etc/mailpipe/mailpipe.toml if present)")
    commands = parser.add_subparsers(metavar="COMMAND")
    for add in (_serve_command, rules.score, rules.rules, urgency.learn, desk.customers, desk.cases, desk.agents,
                desk.stamping, deliverability.dkim, deliverability.dmarc, store.store, deliverability.incidents,
                deliverability.doctor, replies.replies, _check_config_command, queue.queue, manual.help_command):
        add(commands, common)
    manual.attach(parser, {**EXAMPLES, **rules.EXAMPLES, **urgency.EXAMPLES, **desk.EXAMPLES,
                           **deliverability.EXAMPLES, **replies.EXAMPLES, **store.EXAMPLES, **queue.EXAMPLES})
    return parser


def _serve_command(commands: Commands, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the daemon in the foreground")
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from mailpipe.daemon import serve

    return serve(args.config)


def _check_config_command(commands: Commands, common: argparse.ArgumentParser) -> None:
    check = commands.add_parser(
        "check-config", parents=[common], help="validate a config file and the rules it names; exit 0 when valid",
        description="Lists every problem in one pass: each bad key, the checks spanning keys (time zone,"
        " hours, certificate and key files, footer placeholders), the urgency rules and the reply catalog."
        f" Run as root, it also checks that {SERVICE_USER}, who runs the daemon, can read every file named.")
    check.add_argument("path", nargs="?", type=Path, help="the config file (default /etc/mailpipe/mailpipe.toml)")
    check.add_argument("--user", default=SERVICE_USER,
                       help=f"the daemon's user, whose access is checked when run as root (default {SERVICE_USER})")
    check.set_defaults(run=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    as_user = args.user if os.geteuid() == 0 else None
    problems: list[str] = []
    try:
        loaded = configuration.load(args.path or args.config, readable_by=as_user)
    except Problems as exc:
        problems.extend(exc.problems)
        loaded = None
    triage = loaded.triage if loaded else configuration.load_defaults().triage
    overrides = loaded.outbound.replies_overrides_path if loaded else None
    ruleset = catalog = None
    try:
        ruleset = triage_load.ruleset(triage)
    except Problems as exc:
        problems.extend(exc.problems)
    try:
        catalog = classify.configured(overrides)
    except Problems as exc:
        problems.extend(exc.problems)
    try:
        found = corpus.load(triage.corpus_paths)
        if triage.model:
            enough(found, LEVELS)
    except Problems as exc:
        problems.extend(exc.problems)
    if problems or loaded is None or ruleset is None or catalog is None:
        raise Problems(problems)
    print(f"{loaded.source}: ok ({len(loaded.agents)} agents, inbound on {loaded.inbound.listen}, submission on "
          f"{loaded.submission.listen}, {len(ruleset.rules)} rules from {len(ruleset.sources)} files, "
          f"{len(catalog.entries)} known replies, {len(loaded.dkim)} DKIM keys, state in {loaded.state_path})")
    tiers = tuple(sorted({rule.escalate for rule in (*ruleset.plain, *ruleset.composites) if rule.escalate}))
    for warning in desk_config.tiers_without_agents(loaded, tiers):
        print(f"{loaded.source}: warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
