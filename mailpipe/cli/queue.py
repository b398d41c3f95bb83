"""``mailpipe queue``: the spool, in the manner of postqueue and postsuper.

The commands open the spool files of the declared queues (``mailpipe.queues``) directly, with
or without a running daemon; the daemon picks up what they change within a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from mailpipe import config as configuration
from mailpipe import spool
from mailpipe.cli.common import Commands, StateNotFound, complain, json_line, local, opened_store, shown, shown_bytes
from mailpipe.queues import spool_files
from mailpipe.store.desk import reply_queue_id


def queue(commands: Commands, common: argparse.ArgumentParser) -> None:
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


def _spool_files(args: argparse.Namespace) -> list[Path]:
    """The daemon's spool files; none at all means the wrong place, said with where it looked."""
    loaded = configuration.load(args.config)
    found = spool_files(loaded.spool_path)
    if not found:
        raise StateNotFound(f"spool in {loaded.spool_path.absolute()}", loaded)
    return found


def _queue_list(args: argparse.Namespace) -> int:
    now = time.time()
    zone = configuration.load(args.config).triage.timezone
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
                json_line(_entry_json(entry, now))
                continue
            arrival = local(entry.received_at, zone, "%a %b %d %H:%M:%S")
            print(shown(f"{entry.id:<19} {entry.size:>8} {arrival:<20} {entry.envelope.listener:<10} "
                        f"{entry.state:<10} {entry.envelope.mail_from or '<>'}"))
            if entry.last_error:
                print(shown(f"{'':>71}({entry.last_error})"))
            for rcpt in entry.envelope.rcpt_tos:
                print(shown(f"{'':>71}{rcpt}"))
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


def _readable(entry: spool.Entry, now: float, zone: str) -> dict[str, object]:
    """``queue show``'s envelope: moments on the desk's clock, ages in words, never epoch seconds."""
    fields = _entry_json(entry, now)
    fields["arrival_time"] = local(entry.received_at, zone, "%Y-%m-%d %H:%M:%S %Z")
    fields["age_seconds"] = None
    fields["age"] = _duration(now - entry.received_at)
    if entry.state in ("incoming", "deferred"):
        due = entry.next_attempt - now
        fields["next_attempt"] = local(entry.next_attempt, zone, "%Y-%m-%d %H:%M:%S %Z") + (
            f" (in {_duration(due)})" if due > 0 else " (due now)")
    else:
        fields["next_attempt"] = None
    return {key: value for key, value in fields.items() if value is not None}


def _duration(seconds: float) -> str:
    """``1h 5m``: the two largest units, the way a person reads an age."""
    whole = max(0, int(seconds))
    parts = ((whole // 86400, "d"), (whole % 86400 // 3600, "h"), (whole % 3600 // 60, "m"), (whole % 60, "s"))
    return " ".join([f"{n}{unit}" for n, unit in parts if n][:2]) or "0s"


def _queue_show(args: argparse.Namespace) -> int:
    zone = configuration.load(args.config).triage.timezone
    for path in _spool_files(args):
        with closing(spool.connect(path)) as conn:
            found = spool.entries(conn, [args.id])
            data = spool.body(conn, args.id)
        if found and data is not None:
            entry = found[0]
            out = sys.stdout.buffer
            out.write(f"*** ENVELOPE RECORDS {entry.envelope.listener}/{entry.id} ***\n".encode())
            for key, value in _readable(entry, time.time(), zone).items():
                out.write(f"{shown(f'{key}: {value}')}\n".encode())
            out.write(b"*** MESSAGE CONTENTS ***\n")
            out.write(shown_bytes(data.replace(b"\r\n", b"\n")))
            out.flush()
            return 0
    complain(f"queue: {args.id}: not found")
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
            ids = spool.ids(conn) if "ALL" in wanted else sorted(wanted)
            conn.execute("BEGIN IMMEDIATE")
            changed.update(qid for qid in ids if action(conn, qid))
            conn.execute("COMMIT")
    if args.verb == "delete" and changed:
        _replies_deleted(args, changed)
    for qid in sorted(changed):
        print(f"mailpipe: queue: {qid}: {args.verb}")
    missing = sorted(wanted - changed - {"ALL"})
    for qid in missing:
        complain(f"queue: {qid}: not found or not in a state to {args.verb}")
    return 1 if missing else 0


def _replies_deleted(args: argparse.Namespace, deleted: set[str]) -> None:
    """An agent's reply deleted from the queue shows as deleted on its case, never as sent. A
    daemon that never made a store has no case to show it on."""
    try:
        with opened_store(configuration.load(args.config)) as store:
            for qid in deleted:
                store.set_fate("deleted", "deleted from the queue by an operator", time.time(),
                               queue_id=reply_queue_id(qid))
    except StateNotFound:
        return


EXAMPLES = {
    "queue list": ("mailpipe queue list", "mailpipe queue list --json | jq -r 'select(.state == \"deferred\") | .id'"),
    "queue show": ("mailpipe queue show 0A1B2C3D4E5F6G7H | less",),
    "queue flush": ("mailpipe queue flush   # an attempt asked for this way is not counted against the backoff",),
    "queue hold": ("mailpipe queue hold 0A1B2C3D4E5F6G7H", "mailpipe queue hold ALL"),
    "queue release": ("mailpipe queue release 0A1B2C3D4E5F6G7H   # also retries a quarantined message",
                      "mailpipe queue release ALL"),
    "queue delete": ("mailpipe queue delete 0A1B2C3D4E5F6G7H", "mailpipe queue delete ALL"),
}
