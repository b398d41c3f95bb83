"""``mailpipe``: the daemon and the operator's commands, in the manner of postqueue/postsuper.

    mailpipe serve [--config PATH]
    mailpipe check-config [PATH]            the config and the rules it names
    mailpipe score [--json] FILE...|-       explain a message's urgency, like rspamc
    mailpipe rules test                     run every rule's examples
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
import json
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from mailpipe import __version__, spool
from mailpipe import config as configuration
from mailpipe.message import parse
from mailpipe.triage import examples
from mailpipe.triage import load as triage_load
from mailpipe.triage.context import Context
from mailpipe.triage.hours import within_business_hours
from mailpipe.triage.rules import RulesError
from mailpipe.triage.score import evaluate


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except (configuration.ConfigError, RulesError) as exc:
        for problem in exc.problems:
            print(f"mailpipe: {problem}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:
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


def _serve(args: argparse.Namespace) -> int:
    from mailpipe.daemon import serve

    return serve(args.config)


def _check_config(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.path)
    ruleset = triage_load.ruleset(loaded.triage)
    print(f"{loaded.source}: ok ({len(loaded.agents)} agents, inbound on {loaded.inbound.listen}, "
          f"{len(ruleset.rules)} rules from {len(ruleset.sources)} files)")
    return 0


def _score(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    ruleset = triage_load.ruleset(loaded.triage)
    for name in args.files:
        raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        started = time.perf_counter()
        parsed = parse(raw)
        moment = parsed.date if parsed.date and parsed.date.tzinfo else datetime.now(UTC)
        context = Context(parsed, moment, business_hours=within_business_hours(moment, loaded.triage))
        verdict = evaluate(ruleset, context)
        elapsed = time.perf_counter() - started
        if args.json:
            print(json.dumps({"file": name, "score": verdict.score, "level": verdict.level,
                              "escalate": verdict.escalate, "subject": parsed.subject,
                              "rules": [{"name": h.name, "score": h.score, "description": h.description,
                                         "matched": h.matched} for h in verdict.hits]}, ensure_ascii=False))
            continue
        print(f"Results for file: {name} ({elapsed:.3f} seconds)")
        print(f"[Level]: {verdict.level}")
        print(f"[Score]: {verdict.score:g} / {ruleset.levels['critical']:g}")
        print(f"[Subject]: {parsed.subject}")
        for hit in verdict.hits:
            print(f"Symbol: {hit.name} ({hit.score:.2f})[{hit.matched}]")
        if verdict.escalate:
            print(f"Escalate: {verdict.escalate}")
        print()
    return 0


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


def _spool_files(args: argparse.Namespace) -> list[Path]:
    directory = configuration.load(args.config).spool_path
    return sorted(directory.glob("*.sqlite"))


def _queue_list(args: argparse.Namespace) -> int:
    now = time.time()
    total_size = count = 0
    if not args.json:
        print(f"{'-Queue ID-':<17} {'--Size--':>8} {'----Arrival Time----':<20} {'-State-':<10} -Sender/Recipient-")
    for path in _spool_files(args):
        with closing(spool.connect(path)) as conn:
            listed = spool.entries(conn)
        for entry in listed:
            count += 1
            total_size += entry.size
            if args.json:
                print(json.dumps(_entry_json(path.stem, entry, now), ensure_ascii=False))
                continue
            arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(entry.received_at))
            print(f"{entry.id:<17} {entry.size:>8} {arrival:<20} {entry.state:<10} "
                  f"{entry.envelope.mail_from or '<>'}")
            if entry.last_error:
                print(f"{'':>58}({entry.last_error})")
            for rcpt in entry.envelope.rcpt_tos:
                print(f"{'':>58}{rcpt}")
    if not args.json:
        print(f"-- {(total_size + 1023) // 1024} Kbytes in {count} Request{'s' if count != 1 else ''}."
              if count else "Mail queue is empty")
    return 0


def _entry_json(queue_name: str, entry: spool.Entry, now: float) -> dict[str, object]:
    return {
        "queue": queue_name, "id": entry.id, "state": entry.state, "size": entry.size,
        "arrival_time": entry.received_at, "age_seconds": round(now - entry.received_at, 3),
        "sender": entry.envelope.mail_from, "recipients": list(entry.envelope.rcpt_tos),
        "attempts": entry.attempts, "stage_failures": entry.stage_failures,
        "next_attempt": entry.next_attempt, "reason": entry.last_error, "client": entry.envelope.peer,
    }


def _queue_show(args: argparse.Namespace) -> int:
    for path in _spool_files(args):
        with closing(spool.connect(path)) as conn:
            found = spool.entries(conn, [args.id])
            data = spool.body(conn, args.id)
        if found and data is not None:
            entry = found[0]
            out = sys.stdout.buffer
            out.write(f"*** ENVELOPE RECORDS {path.stem}/{entry.id} ***\n".encode())
            for key, value in _entry_json(path.stem, entry, time.time()).items():
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
