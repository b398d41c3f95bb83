"""The support desk's commands: ``customers``, ``cases``, ``agents`` and ``stamp``.

Customers are imported from CSV and shown with their cases, by address or by phone number (who
is calling); cases are listed, told as a timeline (with each reply's fate and the notes), given
a note (a phone call) and closed or reopened; agents are listed with duty and load, marked away or back, and
given their submission password; ``stamp`` previews an agent's reply as the customer gets it.
All of them read and write the daemon's store, with or without a running daemon.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from mailpipe import config as configuration
from mailpipe import credentials, lookup, phones
from mailpipe.addresses import syntax_problem
from mailpipe.cli import customers_csv
from mailpipe.cli.common import Commands, complain, json_line, local, opened_store, shown
from mailpipe.message import parse
from mailpipe.outbound.footer import render
from mailpipe.outbound.stamp import stamp
from mailpipe.triage.hours import on_duty
from mailpipe.triage.render import customer_line, fate_line


def customers(commands: Commands, common: argparse.ArgumentParser) -> None:
    customers = commands.add_parser("customers", help="customer profiles").add_subparsers(metavar="ACTION")
    importing = customers.add_parser("import", parents=[common], help="create or update customers from CSV")
    importing.add_argument("file", type=Path)
    importing.set_defaults(run=_customers_import)
    showing = customers.add_parser("show", parents=[common],
                                   help="a customer's profile and cases, by address or phone number")
    showing.add_argument("address", metavar="ADDRESS|PHONE",
                         help="mail address, or phone number in any spelling (03-1234-5678, +81 3 1234 5678)")
    showing.add_argument("--json", action="store_true")
    showing.set_defaults(run=_customers_show)


_YES = ("1", "true", "yes", "y", "vip")
_NO = ("", "0", "false", "no", "n")


def _customers_import(args: argparse.Namespace) -> int:
    """CSV with a header row; ``address`` is required, other known columns are optional. All
    accepted rows are written in one transaction; a file that is no proper CSV writes none; a
    row with a value that cannot be read (an address, a vip that is neither yes nor no) is
    refused with its line and column."""
    try:
        rows = customers_csv.read(args.file)
    except customers_csv.BadFile as exc:
        complain(f"{exc}; nothing imported")
        return 1
    accepted, problems = [], 0
    for line, row in rows:
        columns = list(row)
        address = (row.pop("address") or "").strip()
        if reason := syntax_problem(address):
            complain(f"{args.file}:{line}: {address!r}: {reason}")
            problems += 1
            continue
        if "vip" in row:
            vip = (row["vip"] or "").strip().lower()
            if vip not in _YES + _NO:
                complain(f"{args.file}:{line}: column {columns.index('vip') + 1} (vip): {row['vip']!r} is not one of "
                         f"{', '.join(_YES)} or {', '.join(n for n in _NO if n)} or empty; row refused")
                problems += 1
                continue
            row["vip"] = vip in _YES
        accepted.append((address, row))
    with opened_store(configuration.load(args.config), create=True) as store:
        store.upsert_customers(accepted)
    print(f"mailpipe: {len(accepted)} customers imported, {problems} rows refused")
    return 1 if problems else 0


def _customers_show(args: argparse.Namespace) -> int:
    if phones.looks_like_phone(args.address):
        return _customers_by_phone(args)
    loaded = configuration.load(args.config)
    with opened_store(loaded) as store:
        profile = store.profile(args.address, time.time())
        cases = store.cases_of(profile.customer.id, 50) if profile else ()
    if profile is None:
        complain(f"customers: {args.address}: not found")
        return 1
    c = profile.customer
    if args.json:
        json_line({**c.__dict__, "cases": [case.__dict__ for case in cases]})
        return 0
    for label, value in (("Address", c.address), ("Name", c.name), ("Company", c.company), ("Plan", c.plan),
                         ("VIP", "yes" if c.vip else "no"), ("Phone", c.phone), ("Owner", c.owner),
                         ("Notes", c.notes)):
        print(shown(f"{label + ':':<9} {value}"))
    print(f"Cases ({len(cases)}):" if cases else "Cases: none")
    for case in cases:
        opened = local(case.opened_at, loaded.triage.timezone)
        print(shown(f"  #{case.id:<6} {opened} {case.status:<9} {case.level:<8} {case.owner:<10} {case.subject}"))
    return 0


def _customers_by_phone(args: argparse.Namespace) -> int:
    """Who is calling: each customer with that number, owner with phone, open cases, last note."""
    loaded = configuration.load(args.config)
    zone = loaded.triage.timezone
    with opened_store(loaded) as store:
        found = lookup.caller(store, loaded.agents, args.address)
    if not found["customers"]:
        complain(f"customers: {args.address}: no customer with phone number {found['phone']}")
        return 1
    if args.json:
        json_line(found)
        return 0
    for customer in found["customers"]:
        owner = customer["owner"]
        print(shown(f"Customer: {customer['address']}  {customer['name']}  {customer['company']}"
                    + ("  VIP" if customer["vip"] else "")))
        print(f"Phone:    {customer['phone']} ({found['phone']})")
        print(f"Owner:    {owner['id']} {owner['name']} {owner['phone']}" if owner else "Owner:    none yet")
        print(f"Open cases ({len(customer['open_cases'])}):" if customer["open_cases"] else "Open cases: none")
        for case in customer["open_cases"]:
            print(shown(f"  #{case['id']:<6} {local(case['opened_at'], zone)} {case['level']:<8} "
                        f"{case['status']:<9} {case['subject']}"))
        note = customer["last_note"]
        if note:
            print(shown(f"Last note: #{note['case']} {local(note['at'], zone)} {note['kind']}: {note['text']}"))
    return 0


def cases(commands: Commands, common: argparse.ArgumentParser) -> None:
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
    noting = cases.add_parser("note", parents=[common], help="add a note to a case (a call: who, what was agreed)")
    noting.add_argument("id", type=int)
    noting.add_argument("text")
    noting.add_argument("--by", required=True, metavar="AGENT_ID", help="the agent who writes it")
    noting.add_argument("--kind", default="call", help="call (default), visit, internal, …")
    noting.set_defaults(run=_cases_note)
    for name, status in (("close", "closed"), ("reopen", "open")):
        command = cases.add_parser(name, parents=[common], help=f"mark cases {status}")
        command.add_argument("ids", nargs="+", type=int, metavar="ID")
        command.set_defaults(run=_cases_status, status=status)


def _cases_list(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    with opened_store(loaded) as store:
        found = store.cases("open" if args.open else None, args.limit)
    if args.json:
        for case in found:
            json_line(case.__dict__)
        return 0
    print(f"{'CASE':<7} {'OPENED':<16} {'STATUS':<8} {'LEVEL':<8} {'SCORE':>6} {'OWNER':<10} SUBJECT")
    for case in found:
        opened = local(case.opened_at, loaded.triage.timezone)
        print(shown(f"#{case.id:<6} {opened:<16} {case.status:<8} {case.level:<8} {case.score:>6g} {case.owner:<10} "
                    f"{case.subject}"))
    return 0


def _cases_show(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    zone = loaded.triage.timezone
    with opened_store(loaded) as store:
        case = store.case(args.id)
        if case is None:
            complain(f"cases: #{args.id}: not found")
            return 1
        customer = store.customer_of(case.id)
        messages, assignments = store.case_messages(case.id), store.case_assignments(case.id)
        notes, fates = store.case_notes(case.id), store.reply_fates(case.id)
        corrections = store.case_corrections(case.id)
    if args.json:
        print(json.dumps({**case.__dict__, "customer": customer.__dict__ if customer else None,
                          "messages": [m.__dict__ for m in messages], "assignments": [a.__dict__ for a in assignments],
                          "notes": [n.__dict__ for n in notes], "replies": [f.__dict__ for f in fates],
                          "corrections": [c.__dict__ for c in corrections]}, ensure_ascii=False))
        return 0
    print(shown(f"Case #{case.id}: {case.status}, {case.level} {case.score:g} — {case.subject}"))
    if customer is not None:
        print(shown(f"Customer: {customer_line(customer)}"))
    print(f"Owner:    {case.owner}" + (f" (escalated to {case.escalated_to})" if case.escalated_to else ""))
    if case.first_response_at is not None:
        print(f"First response after {(case.first_response_at - case.opened_at) / 60:.0f} min")
    timeline = [(m.at, 0, f"{'in':<10} {m.level} {m.score:g}  {m.subject}" + (f"  [{m.rules}]" if m.rules else ""))
                for m in messages if m.direction == "in"]
    timeline += [(f.written, 2, f"{'out':<10} {f.agent}  {f.subject}  — {fate_line(f, zone)}") for f in fates]
    timeline += [(a.at, 1, f"{a.role:<10} {a.agent}: {a.reason}") for a in assignments]
    timeline += [(n.at, 3, f"{'note':<10} {n.kind}: {n.text}") for n in notes]
    timeline += [(c.at, 4, f"{'urgency':<10} {c.from_level} -> {c.to_level} by {c.author}") for c in corrections]
    for at, _, line in sorted(timeline, key=lambda entry: entry[:2]):
        print(shown(f"  {local(at, zone)}  {line}"))
    return 0


def _cases_note(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    if _unknown_agent(loaded, args.by):
        return 1
    with opened_store(loaded) as store:
        if store.case(args.id) is None:
            complain(f"cases: #{args.id}: not found")
            return 1
        store.add_case_note(args.id, args.kind, f"{args.text} ({args.by})", f"note-{uuid.uuid4().hex}", time.time())
    print(f"mailpipe: cases: #{args.id}: {args.kind} note added")
    return 0


def _cases_status(args: argparse.Namespace) -> int:
    missing = []
    with opened_store(configuration.load(args.config)) as store:
        for case_id in args.ids:
            if store.set_status(case_id, args.status, time.time()):
                print(f"mailpipe: cases: #{case_id}: {args.status}")
            else:
                missing.append(case_id)
    for case_id in missing:
        complain(f"cases: #{case_id}: not found")
    return 1 if missing else 0


def agents(commands: Commands, common: argparse.ArgumentParser) -> None:
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


def _agents_list(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    with opened_store(loaded) as store:
        load, away = store.open_load(), store.away()
    now = datetime.now(UTC)
    rows = [{"id": a.id, "name": a.name, "tier": a.tier, "phone": a.phone, "address": a.address,
             "away": a.id in away, "on_duty": a.id not in away and on_duty(a, now, loaded.triage),
             "open_cases": load.get(a.id, 0)} for a in loaded.agents]
    if args.json:
        for row in rows:
            json_line(row)
        return 0
    print(f"{'ID':<12} {'TIER':<8} {'ON DUTY':<8} {'OPEN':>4}  {'PHONE':<16} NAME")
    for row in rows:
        duty = "away" if row["away"] else ("yes" if row["on_duty"] else "no")
        print(f"{row['id']:<12} {row['tier']:<8} {duty:<8} {row['open_cases']:>4}  {row['phone']:<16} {row['name']}")
    return 0


def _unknown_agent(loaded: configuration.Config, agent_id: str) -> bool:
    """Says so when ``agent_id`` is not on the config's roster."""
    if agent_id in {a.id for a in loaded.agents}:
        return False
    complain(f"agents: {agent_id}: no such agent in {loaded.source}")
    return True


def _agents_away(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    if _unknown_agent(loaded, args.id):
        return 1
    with opened_store(loaded, create=True) as store:
        store.set_away(args.id, args.away, time.time())
    print(f"mailpipe: agents: {args.id}: {'away' if args.away else 'back'}")
    return 0


def _agents_passwd(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    if _unknown_agent(loaded, args.id):
        return 1
    if args.password_stdin:
        line = sys.stdin.buffer.readline().rstrip(b"\r\n")
        try:
            password = line.decode("utf-8")
        except UnicodeDecodeError:
            complain("agents: the password on standard input is not UTF-8, nothing changed")
            return 1
    else:
        password = getpass.getpass(f"New password for {args.id}: ")
        if getpass.getpass("Again: ") != password:
            print("mailpipe: agents: passwords differ, nothing changed", file=sys.stderr)
            return 1
    if len(password) < 12:
        print("mailpipe: agents: a password needs at least 12 characters", file=sys.stderr)
        return 1
    with opened_store(loaded, create=True) as store:
        store.set_password(args.id, credentials.hash_password(password), time.time())
    print(f"mailpipe: agents: {args.id}: password set")
    return 0


def stamping(commands: Commands, common: argparse.ArgumentParser) -> None:
    stamping = commands.add_parser("stamp", parents=[common], help="print a reply as the customer will get it")
    stamping.add_argument("file", metavar="FILE", help="message file, or - for standard input")
    stamping.add_argument("--owner", required=True, metavar="AGENT_ID", help="the case owner named in the footer")
    stamping.add_argument("--language", choices=("ja", "en"), help="footer language (default: the message's)")
    stamping.set_defaults(run=_stamp)


def _stamp(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    owner = next((a for a in loaded.agents if a.id == args.owner), None)
    if owner is None:
        complain(f"stamp: {args.owner}: no such agent in {loaded.source}")
        return 1
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    language = args.language or parse(raw).language
    template = loaded.outbound.footer_ja if language == "ja" else loaded.outbound.footer_en
    stamped = stamp(raw, render(template, name=owner.name, phone=owner.phone), loaded.outbound_hostname, time.time())
    for reason in stamped.skipped:
        complain(f"stamp: {reason}")
    sys.stdout.buffer.write(stamped.data)
    sys.stdout.buffer.flush()
    return 0


EXAMPLES = {
    "customers import": ("mailpipe customers import customers.csv   # address,name,company,plan,vip,phone,notes",
                         "  vip: 1/true/yes/y/vip or 0/false/no/n/empty; a row with another value is refused"),
    "customers show": ("mailpipe customers show tanaka@example.co.jp", "mailpipe customers show a@example.com --json",
                       "mailpipe customers show 03-1234-5678   # who is calling"),
    "cases list": ("mailpipe cases list --open", "mailpipe cases list --limit 20", "mailpipe cases list --json"),
    "cases show": ("mailpipe cases show 42", "mailpipe cases show 42 --json"),
    "cases note": ("mailpipe cases note 42 \"田中様より電話: 明日までに再送で合意\" --by yamada",),
    "cases close": ("mailpipe cases close 42 43",),
    "cases reopen": ("mailpipe cases reopen 42",),
    "agents list": ("mailpipe agents list", "mailpipe agents list --json"),
    "agents away": ("mailpipe agents away yamada   # a teammate handles yamada's customers meanwhile",),
    "agents back": ("mailpipe agents back yamada",),
    "agents passwd": ("mailpipe agents passwd yamada            # prompts twice",
                      "printf '%s\\n' \"$PASSWORD\" | mailpipe agents passwd yamada --password-stdin"),
    "stamp": ("mailpipe stamp --owner yamada reply.eml", "mailpipe stamp --owner smith --language en - < reply.eml"),
}
