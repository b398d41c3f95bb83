"""Deliverability commands: ``doctor``, ``dkim keygen``, ``dmarc import`` and ``incidents``.

``doctor`` checks a sending domain's DNS authentication (and a provider's requirements) the
way the daemon's monitors do; ``dkim keygen`` writes a key and prints the record to publish;
``dmarc import`` reads aggregate reports into the store; ``incidents`` lists the providers
refusing our mail, with the customers to phone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mailpipe import auth
from mailpipe import config as configuration
from mailpipe import keys as dkim_keys
from mailpipe.cli.common import SERVICE_USER, Commands, chown_needed, complain, json_line, local, opened_store, owner_of
from mailpipe.monitors import dmarc_reports, dns_checks, profiles

KEY_DIRECTORY = Path("/etc/mailpipe/dkim")


def dkim(commands: Commands, common: argparse.ArgumentParser) -> None:
    dkim_command = commands.add_parser("dkim", help="DKIM keys").add_subparsers(metavar="ACTION")
    keygen = dkim_command.add_parser(
        "keygen", help="write a signing key and print the DNS record to publish",
        description="Writes DIRECTORY/DOMAIN.SELECTOR.key (mode 0600, owned by whoever runs the command; an"
        " existing key is never overwritten), then prints its path and owner, the chown the daemon's user"
        " needs to read it, the TXT record to publish and the [[dkim]] table for mailpipe.toml.")
    keygen.add_argument("--domain", required=True)
    keygen.add_argument("--selector", required=True)
    keygen.add_argument("--algorithm", choices=("rsa-sha256", "ed25519-sha256"), default="rsa-sha256")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--directory", type=Path, default=KEY_DIRECTORY,
                        help=f"where the key file goes (default {KEY_DIRECTORY})")
    keygen.set_defaults(run=_dkim_keygen)


def _dkim_keygen(args: argparse.Namespace) -> int:
    domain = args.domain.lower().rstrip(".")
    if args.algorithm == "rsa-sha256" and not 1024 <= args.bits <= 4096:
        print("mailpipe: dkim: --bits must be between 1024 and 4096 (2048 recommended)", file=sys.stderr)
        return 2
    path = args.directory / f"{domain}.{args.selector}.key"
    try:
        dkim_keys.write_key(path, dkim_keys.generate(args.algorithm, args.bits))
    except FileExistsError:
        complain(f"dkim: {path} exists; choose a new selector to rotate keys")
        return 1
    key = dkim_keys.load_key(domain, args.selector, args.algorithm, path)
    print(f"; wrote {path.absolute()} (mode 0600, owner {owner_of(path)})")
    if chown := chown_needed(path):
        print(f"; the daemon runs as {SERVICE_USER} and must read it: {chown}")
    print(f"; publish in the DNS of {domain}, then add the [[dkim]] table below to mailpipe.toml")
    print(dkim_keys.zone_line(key))
    print()
    print(f'[[dkim]]\ndomain = "{domain}"\nselector = "{args.selector}"\nkey_file = "{path}"\n'
          f'algorithm = "{args.algorithm}"')
    return 0


def dmarc(commands: Commands, common: argparse.ArgumentParser) -> None:
    dmarc = commands.add_parser("dmarc", help="DMARC aggregate reports").add_subparsers(metavar="ACTION")
    importing_reports = dmarc.add_parser("import", parents=[common], help="read reports into the store")
    importing_reports.add_argument("files", nargs="+", type=Path, metavar="FILE")
    importing_reports.add_argument("--json", action="store_true", help="one JSON object per report")
    importing_reports.set_defaults(run=_dmarc_import)


def _dmarc_import(args: argparse.Namespace) -> int:
    failed = 0
    with opened_store(configuration.load(args.config), create=True) as store:
        for path in args.files:
            try:
                found = dmarc_reports.reports(path.read_bytes())
            except (dmarc_reports.ReportError, OSError) as exc:
                complain(f"dmarc: {path}: {exc}")
                failed += 1
                continue
            for report in found:
                new = dmarc_reports.store_report(store, report, time.time())
                if args.json:
                    json_line({**report.as_json(), "file": str(path), "new": new})
                    continue
                records = report.records
                aligned = sum(r.count for r in records if r.dkim_aligned or r.spf_aligned)
                window = (f"{datetime.fromtimestamp(report.begin, UTC):%Y-%m-%d %H:%M} – "
                          f"{datetime.fromtimestamp(report.end, UTC):%Y-%m-%d %H:%M} UTC")
                print(f"{report.org_name} {report.report_id} {report.domain} p={report.policy} {window}: "
                      f"{report.messages} messages from {len({r.source_ip for r in records})} IPs, "
                      f"{aligned}/{report.messages} passed DMARC{'' if new else ' (imported before)'}")
    return 1 if failed else 0


def incidents(commands: Commands, common: argparse.ArgumentParser) -> None:
    incidents = commands.add_parser("incidents", parents=[common],
                                    help="active and recent provider incidents with the customers affected")
    incidents.add_argument("--days", type=float, default=7, help="also incidents that ended this recently")
    incidents.add_argument("--json", action="store_true", help="one JSON object per incident")
    incidents.set_defaults(run=_incidents)


def _incidents(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    with opened_store(loaded) as store:
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
        started = local(record.started, loaded.triage.timezone)
        state = "ACTIVE" if record.ended is None else f"ended {local(record.ended, loaded.triage.timezone, '%H:%M')}"
        print(f"#{record.id} {record.provider:<12} {state:<12} since {started}  {record.klass}: {record.sample}")
        print(f"    {record.refusals} refusals; customers to phone ({len(record.customers)}): "
              + (", ".join(record.customers) or "none yet"))
    return 0


def doctor(commands: Commands, common: argparse.ArgumentParser) -> None:
    doctor = commands.add_parser("doctor", parents=[common],
                                 help="check a sending domain's DNS authentication; exit 0 when all pass")
    doctor.add_argument("domain")
    doctor.add_argument("--provider", help="also judge a provider's requirements (a profile in monitors/providers: "
                        "gmail, yahoo, outlook, icloud, yahoo_japan, docomo, au, softbank)")
    doctor.add_argument("--nameserver", metavar="HOST:PORT", help="ask this DNS server (default: the config's)")
    doctor.add_argument("--ip", action="append", default=None, metavar="IP",
                        help="a sending IP to check SPF and PTR for (default: monitors.sending_ips)")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(run=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    if args.nameserver:
        host, _, port = args.nameserver.rpartition(":")
        auth.configure_resolver([(host.strip("[]"), int(port or 53))])
    else:
        auth.configure_resolver([(ns.host, ns.port) for ns in loaded.auth.nameservers])
    keys = [dkim_keys.load_key(k.domain, k.selector, k.algorithm, Path(k.key_file)) for k in loaded.dkim]
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
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    if args.json:
        document = {**report.as_json(), "ok": ok}
        if profile is not None:
            document["provider"] = profile.key
            document["requirements"] = [_requirement_json(o, today) for o in outcomes]
        json_line(document)
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
            stage = outcome.requirement.enforced(today)
            if outcome.ok is not True and stage is not None:
                print(f"  {'':<5} {'':<26} enforced by {stage.action} since {stage.start}: {stage.detail}")
    problems = sum(not c.ok for c in report.checks) + sum(o.ok is False for o in outcomes)
    unknown = sum(o.ok is None for o in outcomes)
    print(("all checks pass" if ok else f"{problems} problem{'s' if problems != 1 else ''}")
          + (f"; {unknown} requirement{'s' if unknown != 1 else ''} unknown (not passed)" if unknown else ""))
    return 0 if ok else 1


def _requirement_json(outcome: profiles.Outcome, today: str) -> dict[str, object]:
    """One requirement's verdict for ``doctor --json``: ok is true, false or null (unknown)."""
    requirement = outcome.requirement
    stage = requirement.enforced(today)
    return {"id": requirement.id, "ok": outcome.ok, "detail": outcome.detail, "since": requirement.since,
            "source": requirement.source, "unknown_without": requirement.unknown_without or None,
            "enforcement": [{"from": s.start, "action": s.action, "detail": s.detail} for s in requirement.enforcement],
            "enforced_now": stage.action if stage else None}


EXAMPLES = {
    "dkim keygen": ("mailpipe dkim keygen --domain example.com --selector mp2026",
                    "mailpipe dkim keygen --domain example.com --selector mp2026e --algorithm ed25519-sha256",
                    "chown mailpipe:mailpipe /etc/mailpipe/dkim/example.com.mp2026.key   # as printed, as root"),
    "dmarc import": ("mailpipe dmarc import reports/*.xml.gz report.eml", "mailpipe dmarc import report.zip --json"),
    "incidents": ("mailpipe incidents", "mailpipe incidents --days 30 --json"),
    "doctor": ("mailpipe doctor example.com", "mailpipe doctor example.com --provider gmail",
               "mailpipe doctor example.com --ip 192.0.2.10 --nameserver 127.0.0.1:53 --json"),
}
