"""Several daemons sharing one PostgreSQL: real parallel SMTP traffic into two daemon
processes agrees on customers, cases and owners, keeps load-based assignment balanced, and a
database outage loses no mail."""

from __future__ import annotations

import glob
import shutil
import smtplib
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from mailpipe.store.postgres import PostgresStore
from tests.conftest import free_port
from tests.pg_peer import fresh_database
from tests.test_delivery import queue_list, wait_until
from tests.test_lifecycle import metrics

ALWAYS = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "hours": "00:00-24:00"}
AGENTS = [{"id": "yamada", "name": "山田 太郎", "address": "yamada@example.test", "phone": "03-1234-5678", **ALWAYS},
          {"id": "smith", "name": "Alex Smith", "address": "smith@example.test", "phone": "03-1234-5679", **ALWAYS}]


def mail(sender: str, subject: str, message_id: str, in_reply_to: str = "") -> bytes:
    threading_fields = f"In-Reply-To: <{in_reply_to}>\r\nReferences: <{in_reply_to}>\r\n" if in_reply_to else ""
    return (f"From: {sender}\r\nTo: support@example.test\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n"
            f"{threading_fields}\r\nHow do I change the footer?\r\n").encode()


def send_all(batches: list[tuple[int, str, bytes]]) -> None:
    """Every (port, sender, message) at the same moment, one SMTP session each."""
    start = threading.Barrier(len(batches))

    def one(port: int, sender: str, data: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", port) as client:
            start.wait()
            client.sendmail(sender, ["support@example.test"], data)

    threads = [threading.Thread(target=one, args=batch) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


@pytest.fixture
def shared(make_daemon):
    with fresh_database() as url:
        settings = {"store": {"url": url}, "outbound": {"autoreply": False}, "agents": AGENTS}
        first, second = make_daemon(settings, name="mx1"), make_daemon(settings, name="mx2")
        store = PostgresStore(url)
        yield first, second, store
        store.close()
        for daemon in (first, second):
            daemon.stop()


def test_first_mails_of_a_new_customer_at_both_daemons_agree_on_customer_and_owner(shared) -> None:
    first, second, store = shared
    send_all([(daemon.port, "new@example.org", mail("new@example.org", f"question {n}", f"q{n}-{daemon.port}@x"))
              for n in range(4) for daemon in (first, second)])
    wait_until(lambda: len(store.cases()) == 8, timeout=120)
    customer = store.customer("new@example.org")
    assert {case.owner for case in store.cases()} == {customer.owner}
    assert {case.customer_id for case in store.cases()} == {customer.id}


def test_replies_to_one_case_at_both_daemons_stay_in_that_case(shared) -> None:
    first, second, store = shared
    with smtplib.SMTP("127.0.0.1", first.port) as client:
        client.sendmail("c@example.org", ["support@example.test"], mail("c@example.org", "help", "origin@x"))
    wait_until(lambda: len(store.cases()) == 1, timeout=120)
    send_all([(daemon.port, "c@example.org", mail("c@example.org", "Re: help", f"r{n}-{daemon.port}@x", "origin@x"))
              for n in range(3) for daemon in (first, second)])
    wait_until(lambda: sum(1 for table, _ in store.dump() if table == "messages") == 7, timeout=120)
    assert len(store.cases()) == 1


def test_least_loaded_assignment_stays_balanced_across_daemons(shared) -> None:
    first, second, store = shared
    send_all([(daemon.port, f"c{n}-{daemon.port}@example.org",
               mail(f"c{n}-{daemon.port}@example.org", "question", f"b{n}-{daemon.port}@x"))
              for n in range(10) for daemon in (first, second)])
    wait_until(lambda: len(store.cases()) == 20, timeout=60)
    owners = Counter(case.owner for case in store.cases())
    assert sorted(owners.values()) == [10, 10], owners


class PrivatePostgres:
    """A PostgreSQL of the test's own (initdb, pg_ctl), to stop and start at will."""

    def __init__(self) -> None:
        bin_dir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.pg_ctl = bin_dir / "pg_ctl"
        self.directory = Path(tempfile.mkdtemp(prefix="mailpipe-pg-"))
        shutil.chown(self.directory, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres([str(bin_dir / "initdb"), "-D", f"{self.directory}/data", "-A", "trust", "-U", "mailpipe"])
        self.start()

    def _as_postgres(self, command: list[str]) -> None:
        subprocess.run(["su", "postgres", "-c", " ".join(command)], check=True, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql://mailpipe@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._as_postgres([str(self.pg_ctl), "-D", f"{self.directory}/data", "-l", f"{self.directory}/log", "-w",
                           "-o", f"'-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory}'", "start"])

    def stop(self) -> None:
        self._as_postgres([str(self.pg_ctl), "-D", f"{self.directory}/data", "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        subprocess.run(["su", "postgres", "-c", f"{self.pg_ctl} -D {self.directory}/data -m immediate stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)


def health(daemon) -> int:
    try:
        return urllib.request.urlopen(daemon.metrics_url + "/healthz", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mail_waits_in_the_spool_while_postgresql_is_down_and_is_triaged_when_it_is_back(make_daemon) -> None:
    if shutil.which("su") is None or not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("needs Debian's postgresql (installed by `make test`)")
    database = PrivatePostgres()
    try:
        daemon = make_daemon({"store": {"url": database.url}, "outbound": {"autoreply": False}, "agents": AGENTS,
                              "spool": {"retry_initial": "1s", "retry_max": "1s"}})
        database.stop()
        with smtplib.SMTP("127.0.0.1", daemon.port) as client:
            client.sendmail("c@example.org", ["support@example.test"], mail("c@example.org", "help", "down@x"))
        # Tried and put back: "deferred" lasts a second between attempts, so the attempts count it.
        wait_until(lambda: any(e["attempts"] >= 1 for e in queue_list(daemon)), timeout=60)
        wait_until(lambda: metrics(daemon).get(("mailpipe_store_up", ())) == 0, timeout=30)
        assert health(daemon) == 503
        time.sleep(4)  # several failed attempts: still waiting to be tried again, never quarantined
        assert [e["state"] for e in queue_list(daemon)] in (["deferred"], ["active"])
        database.start()
        assert len(daemon.delivered(timeout=30)) == 1
        wait_until(lambda: health(daemon) == 200, timeout=60)
    finally:
        database.remove()
