"""Store speed, SQLite beside PostgreSQL, and what a second daemon on a shared PostgreSQL buys.

1. Case creation + assignment, in process: new customers' messages recorded the way triage does
   (the least-loaded owner chosen inside the store's transaction, on the load there), from 8
   threads like the worker's, on SQLite and on PostgreSQL (a fresh database on the local server).
2. Triage throughput over SMTP: the same burst of messages from new customers into one daemon,
   then split over two daemons sharing one PostgreSQL, timed from the first 250 until every case
   is in the store.

Prints figures and ratios; asserts nothing. Run: python bench/store.py [--operations N] [--messages N]
PostgreSQL: MAILPIPE_TEST_PG_URL, else the local server with `make test`'s role.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import ingest  # noqa: E402  (bench/ingest.py, beside this file)

from mailpipe.store.postgres import PostgresStore  # noqa: E402
from mailpipe.store.sql import SQLStore  # noqa: E402
from mailpipe.store.sqlite import SQLiteStore  # noqa: E402
from tests.dns_peer import Unbound, zones_for_tests  # noqa: E402
from tests.pg_peer import fresh_database  # noqa: E402

AGENTS = ("yamada", "smith", "tanaka", "suzuki")


def least_loaded(owner_now: str, load_now: Mapping[str, int]) -> tuple[tuple[str, str, str], ...]:
    chosen = owner_now or min(AGENTS, key=lambda agent: load_now.get(agent, 0))
    return ((chosen, "owner", "least loaded"),)


def record_new_customer(store: SQLStore, n: int) -> None:
    """One new customer's first message, assigned as triage does: inside the store's transaction."""
    store.record_inbound(queue_id=f"Q{n}", address=f"c{n}@example.org", name="", message_id=f"m{n}@x",
                         subject="question", level="normal", score=1, rules="", case_id=None, decide=least_loaded,
                         escalated_to="", at=time.time())


def operations_per_second(store: SQLStore, count: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: record_new_customer(store, n), range(count)))
    return count / (time.perf_counter() - started)


def daemon_on(directory: Path, url: str, nameserver: str) -> AbstractContextManager[int]:
    """A daemon on the store at ``url`` while the block runs, once it triages; yields its SMTP port."""
    directory.mkdir()
    port = ingest.free_port()
    agents = "".join(f'[[agents]]\nid = "{a}"\nname = "{a}"\naddress = "{a}@localhost"\ndays = ["mon", "tue", "wed",'
                     f' "thu", "fri", "sat", "sun"]\nhours = "00:00-24:00"\n' for a in AGENTS)
    (directory / "mailpipe.toml").write_text(
        f'state_directory = "{directory / "state"}"\nlog_level = "warning"\ndkim = []\n'
        f'[inbound]\nlisten = "127.0.0.1:{port}"\n[submission]\nlisten = "127.0.0.1:{ingest.free_port()}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{ingest.free_port()}"\n[auth]\nnameservers = ["{nameserver}"]\n'
        f'[outbound]\nautoreply = false\n[store]\nurl = "{url}"\n{agents}')
    return ingest.serving_mailpipe(directory / "mailpipe.toml", port, directory / "daemon.log")


def triage_rate(ports: list[int], messages: int, store: SQLStore) -> float:
    body = b"Subject: question\r\nFrom: {sender}\r\n\r\nHow do I change the footer of my newsletter?\r\n"
    started = time.perf_counter()

    def sender(worker: int) -> None:
        port = ports[worker % len(ports)]
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            for n in range(worker, messages, 8):
                address = f"s{n}@example.org"
                client.sendmail(address, ["support@localhost"], body.replace(b"{sender}", address.encode()))

    threads = [threading.Thread(target=sender, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    while len(store.cases(limit=messages + 1)) < messages:
        time.sleep(0.05)
    return messages / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=600)
    args = parser.parse_args()
    os.environ.pop("CI", None)
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-") as directory:
        sqlite = SQLiteStore(Path(directory) / "store.sqlite")
        sqlite_rate = operations_per_second(sqlite, args.operations)
        sqlite.close()
        with fresh_database() as url:
            postgres = PostgresStore(url)
            postgres_rate = operations_per_second(postgres, args.operations)
            postgres.close()
        print(f"{'case creation + assignment, SQLite':<52} {sqlite_rate:>9,.0f} ops/s")
        print(f"{'case creation + assignment, PostgreSQL':<52} {postgres_rate:>9,.0f} ops/s")
        print(f"{'PostgreSQL / SQLite':<52} {postgres_rate / sqlite_rate:>9.2f}")

        dns_server = Unbound(zones_for_tests())
        rates = []
        try:
            for count in (1, 2):
                with fresh_database() as url, ExitStack() as running:
                    ports = [running.enter_context(daemon_on(Path(directory) / f"d{count}-{n}", url,
                                                             dns_server.address)) for n in range(count)]
                    store = PostgresStore(url)
                    try:
                        rates.append(triage_rate(ports, args.messages, store))
                    finally:
                        store.close()
        finally:
            dns_server.stop()
        print(f"{'triage over SMTP, one daemon on PostgreSQL':<52} {rates[0]:>9,.0f} msgs/s")
        print(f"{'triage over SMTP, two daemons sharing PostgreSQL':<52} {rates[1]:>9,.0f} msgs/s")
        print(f"{'two daemons / one':<52} {rates[1] / rates[0]:>9.2f}")


if __name__ == "__main__":
    main()
