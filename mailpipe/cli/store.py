"""``mailpipe store``: the schema, and every row as JSON lines to move from SQLite to PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mailpipe import config as configuration
from mailpipe.cli.common import Commands, complain, opened_store, private_file


def store(commands: Commands, common: argparse.ArgumentParser) -> None:
    store_command = commands.add_parser("store", help="the store of customers and cases").add_subparsers(
        metavar="ACTION")
    store_command.add_parser("migrate", parents=[common], help="create or upgrade the schema").set_defaults(
        run=_store_migrate)
    exporting = store_command.add_parser(
        "export", parents=[common], help="write every row as JSON lines",
        description="The file holds password hashes, phone numbers and notes: it is written owner-only (0600).")
    exporting.add_argument("file", type=Path, help="where to write, or - for standard output")
    exporting.set_defaults(run=_store_export)
    importing_store = store_command.add_parser("import", parents=[common], help="read an export into an empty store")
    importing_store.add_argument("file", type=Path, help="an export, or - for standard input")
    importing_store.set_defaults(run=_store_import)


def _store_migrate(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    with opened_store(loaded, create=True) as store:
        version = store.migrate()
    print(f"mailpipe: store: {loaded.store.url.rpartition('@')[2] or loaded.store_path}: schema version {version}")
    return 0


def _store_export(args: argparse.Namespace) -> int:
    count = 0
    with opened_store(configuration.load(args.config)) as store:
        out = sys.stdout if str(args.file) == "-" else private_file(args.file)
        try:
            for table, row in store.dump():
                out.write(json.dumps({"table": table, "row": row}, ensure_ascii=False) + "\n")
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
    complain(f"store: {count} rows exported")
    return 0


def _store_import(args: argparse.Namespace) -> int:
    source = sys.stdin.buffer if str(args.file) == "-" else args.file.open("rb")
    rows = []
    try:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                rows.append((str(record["table"]), dict(record["row"])))
            except (ValueError, KeyError, TypeError) as exc:  # not UTF-8, not JSON, not a table's row
                complain(f"store: {args.file}:{number}: not an exported row ({type(exc).__name__}: {exc});"
                         " nothing imported")
                return 1
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    with opened_store(configuration.load(args.config), create=True) as store:
        count = store.load(rows)
    print(f"mailpipe: store: {count} rows imported")
    return 0


EXAMPLES = {
    "store migrate": ("mailpipe store migrate",),
    "store export": ("mailpipe store export /root/mailpipe-export.jsonl   # written 0600: it holds personal data",),
    "store import": ("mailpipe store import /root/mailpipe-export.jsonl --config /etc/mailpipe/postgres.toml",),
}
