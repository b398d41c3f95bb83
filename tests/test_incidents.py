"""Provider incidents: opened by refusals, ended by quiet, listed for operators, seen by triage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailpipe.metrics import Metrics
from mailpipe.monitors.incidents import Incidents
from mailpipe.store.sqlite import SQLiteStore
from tests.test_delivery import wait_until
from tests.test_lifecycle import metrics
from tests.test_outbound import customer_writes, delivered_to_owner, desk, mx, submit

__all__ = ["desk", "mx"]  # fixtures shared with the outbound tests
GMAIL_5726 = "550 5.7.26 This mail has been blocked because the sender is unauthenticated."


@pytest.fixture
def tracker(tmp_path: Path):
    now = [1000.0]
    store = SQLiteStore(tmp_path / "store.sqlite")
    incidents = Incidents(store, Metrics(), threshold=3, window=600, quiet=1800, clock=lambda: now[0])
    yield incidents, store, now
    store.close()


def test_enough_refusals_within_the_window_open_an_incident_with_the_customers_hit(tracker) -> None:
    incidents, store, _ = tracker
    for n in range(2):
        incidents.observe("google", "authentication", GMAIL_5726, f"c{n}@gmail.com")
    assert incidents.active() == frozenset()
    incidents.observe("google", "authentication", GMAIL_5726, "c2@gmail.com")
    (record,) = store.incidents(active=True)
    assert incidents.active() == {"google"} and record.sample == GMAIL_5726
    assert record.customers == ("c2@gmail.com",)  # from the refusal that opened it on
    incidents.observe("google", "authentication", GMAIL_5726, "c3@gmail.com")
    assert store.incidents(active=True)[0].customers == ("c2@gmail.com", "c3@gmail.com")


def test_mailbox_problems_and_unknown_providers_open_no_incident(tracker) -> None:
    incidents, _, _ = tracker
    for _ in range(5):
        incidents.observe("google", "recipient", "550 5.1.1 no such user", "x@gmail.com")
        incidents.observe("other", "authentication", GMAIL_5726, "x@example.org")
    assert incidents.active() == frozenset()


def test_one_unknown_text_from_a_known_provider_opens_an_incident_at_once(tracker) -> None:
    incidents, store, _ = tracker
    incidents.observe("softbank", "unknown", "550 5.7.1 なりすましメールの拒否", "s@softbank.ne.jp")
    (record,) = store.incidents(active=True)
    assert (record.provider, record.klass, record.sample) == ("softbank", "unknown", "550 5.7.1 なりすましメールの拒否")
    assert incidents.active() == {"softbank"}


def test_an_unknown_text_from_an_unrecognised_server_opens_nothing(tracker) -> None:
    incidents, _, _ = tracker
    incidents.observe("other", "unknown", "550 something new", "x@example.org")
    assert incidents.active() == frozenset()


def test_refusals_spread_wider_than_the_window_open_nothing(tracker) -> None:
    incidents, _, now = tracker
    for _ in range(3):
        incidents.observe("yahoo", "reputation", "421 4.7.0 [TSS04]", "y@yahoo.com")
        now[0] += 400
    assert incidents.active() == frozenset()


def test_an_incident_ends_after_a_quiet_spell_and_a_restart_remembers_open_ones(tracker, tmp_path: Path) -> None:
    incidents, store, now = tracker
    for _ in range(3):
        incidents.observe("microsoft", "authentication", "550 5.7.515", "m@outlook.com")
    restarted = Incidents(store, Metrics(), clock=lambda: now[0])
    assert restarted.active() == {"microsoft"}
    now[0] += 1801
    incidents.end_quiet()
    assert incidents.active() == frozenset() and store.incidents(active=True) == ()
    assert store.incidents(since=0)[0].ended == now[0]


def test_during_a_gmail_incident_a_customer_naming_gmail_is_boosted_and_the_card_says_why(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}, "monitors": {"incident_threshold": 2}})
    mx.refuse_always("RCPT", GMAIL_5726)
    for n in range(2):
        submit(daemon, f"From: support@example.test\r\nTo: c{n}@gmail.test\r\nSubject: hi\r\n\r\nhello\r\n".encode(),
               rcpts=(f"c{n}@gmail.test",))
    wait_until(lambda: metrics(daemon).get(("mailpipe_incident_active", (("provider", "google"),))) == 1)
    listed = subprocess.run([sys.executable, "-m", "mailpipe", "incidents", "--json", "--config",
                             str(daemon.config_path)], capture_output=True, text=True, check=True).stdout
    (incident,) = [json.loads(line) for line in listed.splitlines()]
    assert incident["active"] and incident["provider"] == "google" and incident["klass"] == "authentication"
    assert incident["customers"] == ["c1@gmail.test"]
    customer_writes(daemon, "Gmailに送ったメールが届きません")
    (delivered,) = [m for m in delivered_to_owner(daemon, 3) if m["X-Mailpipe-Rules"]]  # besides two DSNs
    assert "PROVIDER_INCIDENT(4)" in str(delivered["X-Mailpipe-Rules"])
    (card,) = daemon.delivered(cards=True)
    assert "Incident: google is refusing our mail since" in card.get_payload(decode=True).decode()


def test_a_never_seen_gmail_refusal_opens_an_incident_that_triage_shows_the_agent(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    never_seen = "550 5.7.99 A rule Gmail announced this morning"
    mx.refuse_always("RCPT", never_seen)
    submit(daemon, b"From: support@example.test\r\nTo: c0@gmail.test\r\nSubject: hi\r\n\r\nhello\r\n",
           rcpts=("c0@gmail.test",))
    wait_until(lambda: metrics(daemon).get(("mailpipe_incident_active", (("provider", "google"),))) == 1)
    customer_writes(daemon, "Gmailに送ったメールが届きません")
    (delivered,) = [m for m in delivered_to_owner(daemon, 2) if m["X-Mailpipe-Rules"]]  # besides the DSN
    assert "PROVIDER_INCIDENT(4)" in str(delivered["X-Mailpipe-Rules"])
    (card,) = daemon.delivered(cards=True)
    text = card.get_payload(decode=True).decode()
    assert "Incident: google is refusing our mail since" in text and "(unknown: " in text and never_seen in text
