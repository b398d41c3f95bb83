"""Never lose mail: kill -9 the daemon at random moments under load, restart it, and count.

Every message that received a 250 must be in an agent's mailbox exactly once; a message whose
250 was lost with the daemon may be there once or not at all, never twice.
"""

from __future__ import annotations

import random
import re
import smtplib
import threading
import time
from collections import Counter

from mailpipe import spool as spool_ops
from tests.conftest import Daemon

SENDERS = 20
TARGET = 1000
KILLS = 3
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


class Load:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.acked: set[str] = set()
        self.sent: set[str] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.counter = 0

    def next_id(self) -> str:
        with self.lock:
            self.counter += 1
            return f"crash-{self.counter}@example.org"

    def sender(self) -> None:
        client: smtplib.SMTP | None = None
        while not self.done.is_set():
            message_id = self.next_id()
            body = (f"From: c@example.org\r\nTo: support@example.test\r\nSubject: load\r\n"
                    f"Message-ID: <{message_id}>\r\n\r\n" + "x" * 2000 + "\r\n").encode()
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.daemon.port, timeout=10)
                with self.lock:
                    self.sent.add(message_id)
                client.sendmail("c@example.org", ["support@example.test"], body)
            except (OSError, smtplib.SMTPException):
                client = None
                time.sleep(0.02)
                continue
            with self.lock:
                self.acked.add(message_id)
                if len(self.acked) >= TARGET and self.kills_done:
                    self.done.set()

    kills_done = False


def mailbox_message_ids(daemon: Daemon) -> Counter[str]:
    found: Counter[str] = Counter()
    for path in daemon.state.glob("mailboxes/*/*/*"):
        if path.parent.name in ("new", "cur"):
            match = _MESSAGE_ID.search(path.read_bytes())
            assert match, path
            found[match[1].decode()] += 1
    return found


def test_every_acknowledged_message_arrives_exactly_once_across_kill_9(make_daemon) -> None:
    daemon = make_daemon({"inbound": {"max_connections_per_ip": 100}})
    load = Load(daemon)
    threads = [threading.Thread(target=load.sender, daemon=True) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    rng = random.Random()
    kills = 0
    acked_at_kill = []
    while kills < KILLS:
        time.sleep(rng.uniform(0.3, 1.2))
        settle = time.monotonic() + 30
        while len(load.acked) <= (acked_at_kill[-1] if acked_at_kill else 0) and time.monotonic() < settle:
            time.sleep(0.05)  # kill only while mail is flowing, or the kill proves nothing
        daemon.kill()
        kills += 1
        acked_at_kill.append(len(load.acked))
        daemon.start()
    load.kills_done = True
    deadline = time.monotonic() + 240
    while not load.done.is_set():
        assert time.monotonic() < deadline, f"only {len(load.acked)} acknowledged"
        if len(load.acked) >= TARGET:
            load.done.set()
        time.sleep(0.1)
    for thread in threads:
        thread.join(30)

    deadline = time.monotonic() + 60
    while True:
        delivered = mailbox_message_ids(daemon)
        if load.acked <= set(delivered) or time.monotonic() > deadline:  # cards included: a superset
            break
        time.sleep(0.2)

    assert kills >= KILLS and len(load.acked) >= TARGET
    assert acked_at_kill[0] > 0, "the first kill came before any mail was acknowledged"
    cards = {mid: n for mid, n in delivered.items() if mid.endswith(".triage@mx.example.test")}
    delivered = Counter({mid: n for mid, n in delivered.items() if mid not in cards})
    assert max(cards.values()) == 1, "a triage card was filed twice"
    missing = load.acked - set(delivered)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"
    duplicated = {mid: n for mid, n in delivered.items() if n > 1}
    assert not duplicated, f"delivered more than once: {list(duplicated.items())[:3]}"
    assert set(delivered) <= load.sent
    left = left_in_inbound_spool(daemon)
    assert not left, f"left in the inbound spool: {[(e.id, e.state, e.claims, e.last_error) for e in left[:3]]}"


def left_in_inbound_spool(daemon: Daemon, within: float = 60) -> list[spool_ops.Entry]:
    """What is still in the inbound spool once it drained or ``within`` seconds passed: every
    message handed to its mailboxes leaves it, the kills notwithstanding."""
    deadline = time.monotonic() + within
    while True:
        operator = spool_ops.connect(daemon.state / "spool" / "inbound.sqlite")
        try:
            left = spool_ops.entries(operator)
        finally:
            operator.close()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
