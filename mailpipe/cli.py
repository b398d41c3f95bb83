"""``mailpipe``: the daemon and the operator's commands, in the manner of postqueue/postsuper.

    mailpipe serve [--config PATH]
    mailpipe check-config [PATH]            the config and the rules it names
    mailpipe score [--json] FILE...|-       explain a message's urgency, like rspamc
    mailpipe rules test                     run every rule's examples
    mailpipe customers import FILE.csv      create or update customers (address,name,company,plan,vip,phone,notes)
    mailpipe customers show ADDRESS         profile and case history
    mailpipe cases list [--open] [--json]   cases, newest first
    mailpipe cases close ID... | reopen ID...
    mailpipe agents list [--json]           roster: tier, phone, on duty now, open cases
    mailpipe agents away ID | back ID       take an agent out of (or back into) assignment
    mailpipe agents passwd ID [--password-stdin]   set the agent's submission password
    mailpipe stamp --owner ID FILE|-        preview what a customer gets: the stamped reply
    mailpipe dkim keygen --domain D --selector S [--algorithm A] [--bits N] [--directory DIR]
    mailpipe dmarc import FILE... [--json]  DMARC aggregate reports (XML, .gz, .zip or the e-mail)
    mailpipe incidents [--days N] [--json]  providers refusing our mail, now and lately, with the customers hit
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

Queue commands work on the spool files directly, with or without a running daemon; the daemon
picks up what they change within a second. Exit status: 0 success, 1 failure or not found,
2 usage.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from mailpipe import __version__, auth, credentials, spool
from mailpipe import config as configuration
from mailpipe.addresses import syntax_problem
from mailpipe.data import shipped
from mailpipe.message import parse
from mailpipe.monitors import dmarc_reports, dns_checks, profiles
from mailpipe.outbound import classify, signing
from mailpipe.outbound.stamp import render, stamp
from mailpipe.pipeline import customer_line, triage_context
from mailpipe.store import CONTACTS_DAYS, CONTACTS_KEPT, StoreError, StoreUnavailable
from mailpipe.store.backends import open_store
from mailpipe.store.sql import SQLStore
from mailpipe.triage import examples
from mailpipe.triage import load as triage_load
from mailpipe.triage.hours import on_duty
from mailpipe.triage.rules import RulesError, RuleSet
from mailpipe.triage.score import evaluate


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except (configuration.ConfigError, RulesError, classify.CatalogError, profiles.ProfileError) as exc:
        for problem in exc.problems:
            print(f"mailpipe: {problem}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, StoreError, StoreUnavailable) as exc:
        print(f"mailpipe: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailpipe", description="Support-mail and deliverability daemon.")
    parser.add_argument("--version", action="version", version=f"mailpipe {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="config file (default /etc/mailpipe/mailpipe.toml if present)")
    commands = parser.add_subparsers(metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the daemon in the foreground")
    serve.set_defaults(run=_serve)

    score = commands.add_parser("score", parents=[common], help="explain the urgency score of messages")
    score.add_argument("files", nargs="+", metavar="FILE", help="message files, or - for standard input")
    score.add_argument("--json", action="store_true", help="one JSON object per line, per message")
    score.set_defaults(run=_score)

    rules_command = commands.add_parser("rules", help="urgency rules").add_subparsers(metavar="ACTION")
    rules_command.add_parser("test", parents=[common], help="check every rule's examples").set_defaults(
        run=_rules_test)

    customers = commands.add_parser("customers", help="customer profiles").add_subparsers(metavar="ACTION")
    importing = customers.add_parser("import", parents=[common], help="create or update customers from CSV")
    importing.add_argument("file", type=Path)
    importing.set_defaults(run=_customers_import)
    showing = customers.add_parser("show", parents=[common], help="a customer's profile and cases")
    showing.add_argument("address")
    showing.add_argument("--json", action="store_true")
    showing.set_defaults(run=_customers_show)

    cases = commands.add_parser("cases", help="support cases").add_subparsers(metavar="ACTION")
    listing_cases = cases.add_parser("list", parents=[common], help="cases, newest first")
    listing_cases.add_argument("--open", action="store_true", help="only open cases")
    listing_cases.add_argument("--json", action="store_true")
    listing_cases.add_argument("--limit", type=int, default=100)
    listing_cases.set_defaults(run=_cases_list)
    showing_case = cases.add_parser("show", parents=[common], help="a case: customer, messages, assignments, notes")
    showing_case.add_argument("id", type=int)
    showing_case.add_argument("--json", action="store_true")
    showing_case.set_defaults(run=_cases_show)
    for name, status in (("close", "closed"), ("reopen", "open")):
        command = cases.add_parser(name, parents=[common], help=f"mark cases {status}")
        command.add_argument("ids", nargs="+", type=int, metavar="ID")
        command.set_defaults(run=_cases_status, status=status)

    agents = commands.add_parser("agents", help="the support desk's roster").add_subparsers(metavar="ACTION")
    roster = agents.add_parser("list", parents=[common], help="agents with duty and load")
    roster.add_argument("--json", action="store_true")
    roster.set_defaults(run=_agents_list)
    for name, away in (("away", True), ("back", False)):
        command = agents.add_parser(name, parents=[common], help=f"mark an agent {name}")
        command.add_argument("id")
        command.set_defaults(run=_agents_away, away=away)
    passwd = agents.add_parser("passwd", parents=[common], help="set an agent's submission (SMTP AUTH) password")
    passwd.add_argument("id")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    passwd.set_defaults(run=_agents_passwd)

    stamping = commands.add_parser("stamp", parents=[common], help="print a reply as the customer will get it")
    stamping.add_argument("file", metavar="FILE", help="message file, or - for standard input")
    stamping.add_argument("--owner", required=True, metavar="AGENT_ID", help="the case owner named in the footer")
    stamping.add_argument("--language", choices=("ja", "en"), help="footer language (default: the message's)")
    stamping.set_defaults(run=_stamp)

    dkim_command = commands.add_parser("dkim", help="DKIM keys").add_subparsers(metavar="ACTION")
    keygen = dkim_command.add_parser("keygen", help="write a signing key and print the DNS record to publish")
    keygen.add_argument("--domain", required=True)
    keygen.add_argument("--selector", required=True)
    keygen.add_argument("--algorithm", choices=("rsa-sha256", "ed25519-sha256"), default="rsa-sha256")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--directory", type=Path, default=Path("/etc/mailpipe/dkim"))
    keygen.set_defaults(run=_dkim_keygen)

    dmarc = commands.add_parser("dmarc", help="DMARC aggregate reports").add_subparsers(metavar="ACTION")
    importing_reports = dmarc.add_parser("import", parents=[common], help="read reports into the store")
    importing_reports.add_argument("files", nargs="+", type=Path, metavar="FILE")
    importing_reports.add_argument("--json", action="store_true", help="one JSON object per report")
    importing_reports.set_defaults(run=_dmarc_import)

    store_command = commands.add_parser("store", help="the store of customers and cases").add_subparsers(
        metavar="ACTION")
    store_command.add_parser("migrate", parents=[common], help="create or upgrade the schema").set_defaults(
        run=_store_migrate)
    exporting = store_command.add_parser("export", parents=[common], help="write every row as JSON lines")
    exporting.add_argument("file", type=Path, help="where to write, or - for standard output")
    exporting.set_defaults(run=_store_export)
    importing_store = store_command.add_parser("import", parents=[common], help="read an export into an empty store")
    importing_store.add_argument("file", type=Path, help="an export, or - for standard input")
    importing_store.set_defaults(run=_store_import)

    incidents = commands.add_parser("incidents", parents=[common],
                                    help="active and recent provider incidents with the customers affected")
    incidents.add_argument("--days", type=float, default=7, help="also incidents that ended this recently")
    incidents.add_argument("--json", action="store_true", help="one JSON object per incident")
    incidents.set_defaults(run=_incidents)

    doctor = commands.add_parser("doctor", parents=[common],
                                 help="check a sending domain's DNS authentication; exit 0 when all pass")
    doctor.add_argument("domain")
    doctor.add_argument("--provider", help="also judge a provider's requirements (gmail, yahoo, outlook)")
    doctor.add_argument("--nameserver", metavar="HOST:PORT", help="ask this DNS server (default: the config's)")
    doctor.add_argument("--ip", action="append", default=None, metavar="IP",
                        help="a sending IP to check SPF and PTR for (default: monitors.sending_ips)")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(run=_doctor)

    check = commands.add_parser("check-config", help="validate a config file; exit 0 when valid")
    check.add_argument("path", nargs="?", type=Path)
    check.set_defaults(run=_check_config, config=None)

    queue = commands.add_parser("queue", help="inspect and manage the spool").add_subparsers(metavar="ACTION")
    listing = queue.add_parser("list", parents=[common], help="list queued messages")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=_queue_list)
    show = queue.add_parser("show", parents=[common], help="print a message's envelope and content")
    show.add_argument("id")
    show.set_defaults(run=_queue_show)
    queue.add_parser("flush", parents=[common], help="retry deferred messages now").set_defaults(run=_queue_flush)
    for name, action, help_text in (
        ("hold", spool.hold, "park messages until released"),
        ("release", None, "return held or quarantined messages to the queue"),
        ("delete", spool.remove, "delete messages"),
    ):
        command = queue.add_parser(name, parents=[common], help=help_text)
        command.add_argument("ids", nargs="+", metavar="ID", help="queue ids, or ALL")
        command.set_defaults(run=_queue_change, action=action or _release_now, verb=name)
    return parser


@contextmanager
def _store(config: configuration.Config) -> Iterator[SQLStore]:
    """The daemon's store (SQLite, or the shared PostgreSQL), for one command."""
    store = open_store(config)
    try:
        yield store
    finally:
        store.close()


def _serve(args: argparse.Namespace) -> int:
    from mailpipe.daemon import serve

    return serve(args.config)


def _check_config(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.path)
    ruleset = triage_load.ruleset(loaded.triage)
    catalog = classify.load(shipped("monitors") / "replies.toml", loaded.outbound.replies_overrides_path)
    print(f"{loaded.source}: ok ({len(loaded.agents)} agents, inbound on {loaded.inbound.listen}, submission on "
          f"{loaded.submission.listen}, {len(ruleset.rules)} rules from {len(ruleset.sources)} files, "
          f"{len(catalog.entries)} known replies, {len(loaded.dkim)} DKIM keys)")
    return 0


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


_CSV_FIELDS = ("address", "name", "company", "plan", "vip", "phone", "notes")


def _customers_import(args: argparse.Namespace) -> int:
    """CSV with a header row; ``address`` is required, other known columns are optional."""
    with _store(configuration.load(args.config)) as store, args.file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if "address" not in columns or not columns <= set(_CSV_FIELDS):
            print(f"mailpipe: {args.file}: header must have address and only {', '.join(_CSV_FIELDS)}",
                  file=sys.stderr)
            return 1
        imported, problems = 0, 0
        for line, row in enumerate(reader, start=2):
            address = (row.pop("address") or "").strip()
            if reason := syntax_problem(address):
                print(f"mailpipe: {args.file}:{line}: {address!r}: {reason}", file=sys.stderr)
                problems += 1
                continue
            if "vip" in row:
                row["vip"] = (row["vip"] or "").strip().lower() in ("1", "true", "yes", "y", "vip")
            store.upsert_customer(address, **{k: v for k, v in row.items() if v is not None})
            imported += 1
    print(f"mailpipe: {imported} customers imported, {problems} rows refused")
    return 1 if problems else 0


def _customers_show(args: argparse.Namespace) -> int:
    with _store(configuration.load(args.config)) as store:
        profile = store.profile(args.address, time.time())
        cases = store.cases_of(profile.customer.id, 50) if profile else ()
    if profile is None:
        print(f"mailpipe: customers: {args.address}: not found", file=sys.stderr)
        return 1
    c = profile.customer
    if args.json:
        print(json.dumps({**c.__dict__, "cases": [case.__dict__ for case in cases]}, ensure_ascii=False))
        return 0
    for label, value in (("Address", c.address), ("Name", c.name), ("Company", c.company), ("Plan", c.plan),
                         ("VIP", "yes" if c.vip else "no"), ("Phone", c.phone), ("Owner", c.owner),
                         ("Notes", c.notes)):
        print(f"{label + ':':<9} {value}")
    print(f"Cases ({len(cases)}):" if cases else "Cases: none")
    for case in cases:
        opened = _local(case.opened_at)
        print(f"  #{case.id:<6} {opened} {case.status:<9} {case.level:<8} {case.owner:<10} {case.subject}")
    return 0


def _local(at: float) -> str:
    """A moment as the operator's clock shows it, to the minute, the same in every listing."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def _cases_list(args: argparse.Namespace) -> int:
    with _store(configuration.load(args.config)) as store:
        found = store.cases("open" if args.open else None, args.limit)
    if args.json:
        for case in found:
            print(json.dumps(case.__dict__, ensure_ascii=False))
        return 0
    print(f"{'CASE':<7} {'OPENED':<16} {'STATUS':<8} {'LEVEL':<8} {'SCORE':>6} {'OWNER':<10} SUBJECT")
    for case in found:
        opened = _local(case.opened_at)
        print(f"#{case.id:<6} {opened:<16} {case.status:<8} {case.level:<8} {case.score:>6g} {case.owner:<10} "
              f"{case.subject}")
    return 0


def _cases_show(args: argparse.Namespace) -> int:
    with _store(configuration.load(args.config)) as store:
        case = store.case(args.id)
        if case is None:
            print(f"mailpipe: cases: #{args.id}: not found", file=sys.stderr)
            return 1
        customer = store.customer_of(case.id)
        messages, assignments = store.case_messages(case.id), store.case_assignments(case.id)
        notes = store.case_notes(case.id)
    if args.json:
        print(json.dumps({**case.__dict__, "customer": customer.__dict__ if customer else None,
                          "messages": [m.__dict__ for m in messages], "assignments": [a.__dict__ for a in assignments],
                          "notes": [n.__dict__ for n in notes]}, ensure_ascii=False))
        return 0
    print(f"Case #{case.id}: {case.status}, {case.level} {case.score:g} — {case.subject}")
    if customer is not None:
        print(f"Customer: {customer_line(customer)}")
    print(f"Owner:    {case.owner}" + (f" (escalated to {case.escalated_to})" if case.escalated_to else ""))
    if case.first_response_at is not None:
        print(f"First response after {(case.first_response_at - case.opened_at) / 60:.0f} min")
    timeline = [(m.at, 0 if m.direction == "in" else 2,
                 f"{'in':<10} {m.level} {m.score:g}  {m.subject}" + (f"  [{m.rules}]" if m.rules else "")
                 if m.direction == "in" else f"{'out':<10} {m.agent}  {m.subject}") for m in messages]
    timeline += [(a.at, 1, f"{a.role:<10} {a.agent}: {a.reason}") for a in assignments]
    timeline += [(n.at, 3, f"{'note':<10} {n.kind}: {n.text}") for n in notes]
    for at, _, line in sorted(timeline, key=lambda entry: entry[:2]):
        print(f"  {_local(at)}  {line}")
    return 0


def _cases_status(args: argparse.Namespace) -> int:
    missing = []
    with _store(configuration.load(args.config)) as store:
        for case_id in args.ids:
            if store.set_status(case_id, args.status, time.time()):
                print(f"mailpipe: cases: #{case_id}: {args.status}")
            else:
                missing.append(case_id)
    for case_id in missing:
        print(f"mailpipe: cases: #{case_id}: not found", file=sys.stderr)
    return 1 if missing else 0


def _agents_list(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    with _store(loaded) as store:
        load, away = store.open_load(), store.away()
    now = datetime.now(UTC)
    rows = [{"id": a.id, "name": a.name, "tier": a.tier, "phone": a.phone, "address": a.address,
             "away": a.id in away, "on_duty": a.id not in away and on_duty(a, now, loaded.triage),
             "open_cases": load.get(a.id, 0)} for a in loaded.agents]
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    print(f"{'ID':<12} {'TIER':<8} {'ON DUTY':<8} {'OPEN':>4}  {'PHONE':<16} NAME")
    for row in rows:
        duty = "away" if row["away"] else ("yes" if row["on_duty"] else "no")
        print(f"{row['id']:<12} {row['tier']:<8} {duty:<8} {row['open_cases']:>4}  {row['phone']:<16} {row['name']}")
    return 0


def _agents_away(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    if args.id not in {a.id for a in loaded.agents}:
        print(f"mailpipe: agents: {args.id}: no such agent in {loaded.source}", file=sys.stderr)
        return 1
    with _store(loaded) as store:
        store.set_away(args.id, args.away, time.time())
    print(f"mailpipe: agents: {args.id}: {'away' if args.away else 'back'}")
    return 0


def _agents_passwd(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    if args.id not in {a.id for a in loaded.agents}:
        print(f"mailpipe: agents: {args.id}: no such agent in {loaded.source}", file=sys.stderr)
        return 1
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"New password for {args.id}: ")
        if getpass.getpass("Again: ") != password:
            print("mailpipe: agents: passwords differ, nothing changed", file=sys.stderr)
            return 1
    if len(password) < 12:
        print("mailpipe: agents: a password needs at least 12 characters", file=sys.stderr)
        return 1
    with _store(loaded) as store:
        store.set_password(args.id, credentials.hash_password(password), time.time())
    print(f"mailpipe: agents: {args.id}: password set")
    return 0


def _stamp(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    owner = next((a for a in loaded.agents if a.id == args.owner), None)
    if owner is None:
        print(f"mailpipe: stamp: {args.owner}: no such agent in {loaded.source}", file=sys.stderr)
        return 1
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    language = args.language or parse(raw).language
    template = loaded.outbound.footer_ja if language == "ja" else loaded.outbound.footer_en
    stamped = stamp(raw, render(template, name=owner.name, phone=owner.phone), loaded.outbound_hostname, time.time())
    for reason in stamped.skipped:
        print(f"mailpipe: stamp: {reason}", file=sys.stderr)
    sys.stdout.buffer.write(stamped.data)
    sys.stdout.buffer.flush()
    return 0


def _dkim_keygen(args: argparse.Namespace) -> int:
    domain = args.domain.lower().rstrip(".")
    if args.algorithm == "rsa-sha256" and not 1024 <= args.bits <= 4096:
        print("mailpipe: dkim: --bits must be between 1024 and 4096 (2048 recommended)", file=sys.stderr)
        return 2
    path = args.directory / f"{domain}.{args.selector}.key"
    try:
        signing.write_key(path, signing.generate(args.algorithm, args.bits))
    except FileExistsError:
        print(f"mailpipe: dkim: {path} exists; choose a new selector to rotate keys", file=sys.stderr)
        return 1
    key = signing.load_key(domain, args.selector, args.algorithm, path)
    print(f"; publish in the DNS of {domain}, then add the [[dkim]] table below to mailpipe.toml")
    print(signing.zone_line(key))
    print()
    print(f'[[dkim]]\ndomain = "{domain}"\nselector = "{args.selector}"\nkey_file = "{path}"\n'
          f'algorithm = "{args.algorithm}"')
    return 0


def _dmarc_import(args: argparse.Namespace) -> int:
    failed = 0
    with _store(configuration.load(args.config)) as store:
        for path in args.files:
            try:
                found = dmarc_reports.reports(path.read_bytes())
            except (dmarc_reports.ReportError, OSError) as exc:
                print(f"mailpipe: dmarc: {path}: {exc}", file=sys.stderr)
                failed += 1
                continue
            for report in found:
                new = dmarc_reports.store_report(store, report, time.time())
                if args.json:
                    print(json.dumps({**report.as_json(), "file": str(path), "new": new}, ensure_ascii=False))
                    continue
                records = report.records
                aligned = sum(r.count for r in records if r.dkim_aligned or r.spf_aligned)
                window = (f"{datetime.fromtimestamp(report.begin, UTC):%Y-%m-%d %H:%M} – "
                          f"{datetime.fromtimestamp(report.end, UTC):%Y-%m-%d %H:%M} UTC")
                print(f"{report.org_name} {report.report_id} {report.domain} p={report.policy} {window}: "
                      f"{report.messages} messages from {len({r.source_ip for r in records})} IPs, "
                      f"{aligned}/{report.messages} passed DMARC{'' if new else ' (imported before)'}")
    return 1 if failed else 0


def _store_migrate(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    with _store(loaded) as store:
        version = store.migrate()
    print(f"mailpipe: store: {loaded.store.url.rpartition('@')[2] or loaded.store_path}: schema version {version}")
    return 0


def _store_export(args: argparse.Namespace) -> int:
    out = sys.stdout if str(args.file) == "-" else args.file.open("w", encoding="utf-8")
    count = 0
    try:
        with _store(configuration.load(args.config)) as store:
            for table, row in store.dump():
                out.write(json.dumps({"table": table, "row": row}, ensure_ascii=False) + "\n")
                count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"mailpipe: store: {count} rows exported", file=sys.stderr)
    return 0


def _store_import(args: argparse.Namespace) -> int:
    source = sys.stdin if str(args.file) == "-" else args.file.open(encoding="utf-8")
    try:
        rows = [(record["table"], record["row"]) for record in map(json.loads, filter(str.strip, source))]
    finally:
        if source is not sys.stdin:
            source.close()
    with _store(configuration.load(args.config)) as store:
        count = store.load(rows)
    print(f"mailpipe: store: {count} rows imported")
    return 0


def _incidents(args: argparse.Namespace) -> int:
    with _store(configuration.load(args.config)) as store:
        found = store.incidents(since=time.time() - args.days * 86400)
    if args.json:
        for record in found:
            print(json.dumps({**record.__dict__, "active": record.ended is None, "customers": list(record.customers)},
                             ensure_ascii=False))
        return 0
    if not found:
        print("mailpipe: no provider incidents")
        return 0
    for record in found:
        started = _local(record.started)
        state = "ACTIVE" if record.ended is None else f"ended {time.strftime('%H:%M', time.localtime(record.ended))}"
        print(f"#{record.id} {record.provider:<12} {state:<12} since {started}  {record.klass}: {record.sample}")
        print(f"    {record.refusals} refusals; customers to phone ({len(record.customers)}): "
              + (", ".join(record.customers) or "none yet"))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    if args.nameserver:
        host, _, port = args.nameserver.rpartition(":")
        auth.configure_resolver([(host.strip("[]"), int(port or 53))])
    else:
        auth.configure_resolver([(ns.host, ns.port) for ns in loaded.auth.nameservers])
    keys = [signing.load_key(k.domain, k.selector, k.algorithm, Path(k.key_file)) for k in loaded.dkim]
    ips = args.ip if args.ip is not None else list(loaded.monitors.sending_ips)
    report = dns_checks.check_domain(args.domain, sending_ips=ips, keys=keys, helo=loaded.outbound_hostname)
    outcomes: list[profiles.Outcome] = []
    profile = None
    if args.provider:
        known = profiles.load(loaded.monitors.providers_path)
        profile = next((p for p in known if args.provider.lower() in (p.key, p.provider)), None)
        if profile is None:
            print(f"mailpipe: doctor: no provider profile {args.provider!r} (have: "
                  f"{', '.join(p.key for p in known)})", file=sys.stderr)
            return 2
        results = {check.name: check.ok for check in report.checks}
        outcomes = profiles.evaluate(profile, results, bulk=loaded.monitors.bulk_sender)
    ok = report.ok and all(o.ok is not False for o in outcomes)
    if args.json:
        document = {**report.as_json(), "ok": ok}
        if profile is not None:
            document["provider"] = profile.key
            document["requirements"] = [{"id": o.requirement.id, "ok": o.ok, "detail": o.detail,
                                         "since": o.requirement.since, "source": o.requirement.source}
                                        for o in outcomes]
        print(json.dumps(document, ensure_ascii=False))
        return 0 if ok else 1
    print(f"{report.domain}" + (f" (requirements of {profile.name})" if profile else ""))
    for check in report.checks:
        print(f"  {'ok' if check.ok else 'FAIL':<5} {check.name:<26} {check.detail}")
        if check.fix:
            print(f"  {'':<5} {'':<26} fix: {check.fix}")
    if profile is not None:
        print(f"{profile.name}:")
        for outcome in outcomes:
            mark = {True: "ok", False: "FAIL", None: "?"}[outcome.ok]
            print(f"  {mark:<5} {outcome.requirement.id:<26} {outcome.requirement.description}"
                  f" (since {outcome.requirement.since})")
            if outcome.ok is not True:
                print(f"  {'':<5} {'':<26} {outcome.detail}")
    problems = sum(not c.ok for c in report.checks) + sum(o.ok is False for o in outcomes)
    print("all checks pass" if ok else f"{problems} problem{'s' if problems != 1 else ''}")
    return 0 if ok else 1


def _spool_files(args: argparse.Namespace) -> list[Path]:
    directory = configuration.load(args.config).spool_path
    return sorted(directory.glob("*.sqlite"))


def _queue_list(args: argparse.Namespace) -> int:
    now = time.time()
    total_size = count = 0
    if not args.json:
        print(f"{'-Queue ID-':<19} {'--Size--':>8} {'----Arrival Time----':<20} {'-Queue-':<10} {'-State-':<10} "
              "-Sender/Recipient-")
    for path in _spool_files(args):
        with closing(spool.connect(path)) as conn:
            listed = spool.entries(conn)
        for entry in listed:
            count += 1
            total_size += entry.size
            if args.json:
                print(json.dumps(_entry_json(entry, now), ensure_ascii=False))
                continue
            arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(entry.received_at))
            print(f"{entry.id:<19} {entry.size:>8} {arrival:<20} {entry.envelope.listener:<10} {entry.state:<10} "
                  f"{entry.envelope.mail_from or '<>'}")
            if entry.last_error:
                print(f"{'':>71}({entry.last_error})")
            for rcpt in entry.envelope.rcpt_tos:
                print(f"{'':>71}{rcpt}")
    if not args.json:
        print(f"-- {(total_size + 1023) // 1024} Kbytes in {count} Request{'s' if count != 1 else ''}."
              if count else "Mail queue is empty")
    return 0


def _entry_json(entry: spool.Entry, now: float) -> dict[str, object]:
    return {
        "queue": entry.envelope.listener, "id": entry.id, "state": entry.state, "size": entry.size,
        "arrival_time": entry.received_at, "age_seconds": round(now - entry.received_at, 3),
        "sender": entry.envelope.mail_from, "recipients": list(entry.envelope.rcpt_tos),
        "attempts": entry.attempts, "stage_failures": entry.stage_failures,
        "next_attempt": entry.next_attempt, "reason": entry.last_error, "client": entry.envelope.peer,
        "agent": entry.envelope.submitter,
    }


def _queue_show(args: argparse.Namespace) -> int:
    for path in _spool_files(args):
        with closing(spool.connect(path)) as conn:
            found = spool.entries(conn, [args.id])
            data = spool.body(conn, args.id)
        if found and data is not None:
            entry = found[0]
            out = sys.stdout.buffer
            out.write(f"*** ENVELOPE RECORDS {entry.envelope.listener}/{entry.id} ***\n".encode())
            for key, value in _entry_json(entry, time.time()).items():
                out.write(f"{key}: {value}\n".encode())
            out.write(b"*** MESSAGE CONTENTS ***\n")
            out.write(data.replace(b"\r\n", b"\n"))
            out.flush()
            return 0
    print(f"mailpipe: queue: {args.id}: not found", file=sys.stderr)
    return 1


def _queue_flush(args: argparse.Namespace) -> int:
    flushed = 0
    for path in _spool_files(args):
        with closing(spool.connect(path)) as conn:
            flushed += spool.flush(conn, time.time())
    print(f"mailpipe: queue: {flushed} deferred message(s) scheduled for delivery now")
    return 0


def _release_now(conn: object, qid: str) -> bool:
    return spool.release(conn, qid, time.time())  # type: ignore[arg-type]


def _queue_change(args: argparse.Namespace) -> int:
    action: Callable[..., bool] = args.action
    wanted = set(args.ids)
    changed: set[str] = set()
    for path in _spool_files(args):
        with closing(spool.connect(path)) as conn:
            ids = [e.id for e in spool.entries(conn)] if "ALL" in wanted else sorted(wanted)
            conn.execute("BEGIN IMMEDIATE")
            changed.update(qid for qid in ids if action(conn, qid))
            conn.execute("COMMIT")
    for qid in sorted(changed):
        print(f"mailpipe: queue: {qid}: {args.verb}")
    missing = sorted(wanted - changed - {"ALL"})
    for qid in missing:
        print(f"mailpipe: queue: {qid}: not found or not in a state to {args.verb}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
