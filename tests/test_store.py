"""The SQLite store: migrations, customers, cases, assignments, idempotent recording."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailpipe.store.sqlite import MIGRATIONS, SQLiteStore, StoreError


@pytest.fixture
def store(tmp_path: Path):
    opened = SQLiteStore(tmp_path / "store.sqlite")
    yield opened
    opened.close()


def record(store: SQLiteStore, queue_id: str, *, case_id: int | None = None, owner: str = "yamada",
           address: str = "c@example.org", at: float = 1000.0, level: str = "normal", score: float = 1.0):
    return store.record_inbound(queue_id=queue_id, address=address, name="C", message_id=f"{queue_id}@x",
                                subject="s", level=level, score=score, rules="R(1)", case_id=case_id,
                                assignments=((owner, "owner", "new customer; least loaded (0 open)"),),
                                escalated_to="", at=at)


def test_a_new_database_is_migrated_to_the_latest_schema(store: SQLiteStore) -> None:
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_from_a_newer_mailpipe_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this mailpipe"):
        SQLiteStore(path)


def test_first_contact_creates_the_customer_and_a_case_with_its_owner(store: SQLiteStore) -> None:
    recorded = record(store, "Q1")
    assert recorded.new_case and recorded.case.id == 1 and recorded.case.owner == "yamada"
    assert recorded.customer.address == "c@example.org" and recorded.customer.owner == "yamada"
    assert [(a.agent, a.role) for a in recorded.assignments] == [("yamada", "owner")]


def test_recording_the_same_queue_id_again_returns_the_first_result(store: SQLiteStore) -> None:
    first = record(store, "Q1")
    again = record(store, "Q1", owner="smith")
    assert again == first
    assert store.open_load() == {"yamada": 1}


def test_a_message_threads_into_a_case_by_message_id_or_token_of_the_same_customer(store: SQLiteStore) -> None:
    record(store, "Q1")
    assert store.find_case(("Q1@x",), None, "other@example.org").id == 1
    assert store.find_case((), 1, "C@Example.org").id == 1
    assert store.find_case((), 1, "other@example.org") is None
    continued = record(store, "Q2", case_id=1, level="high", score=6)
    assert not continued.new_case
    assert (continued.case.level, continued.case.score) == ("high", 6)


def test_the_profile_carries_recent_contacts_the_open_case_and_history(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0)
    record(store, "Q2", at=2000.0)
    profile = store.profile("c@example.org", now=3000.0)
    assert profile.contacts == (1000.0, 2000.0)
    assert profile.open_case.id == 1
    assert [c.id for c in profile.recent_cases] == [2, 1]


def test_imported_fields_update_an_existing_customer(store: SQLiteStore) -> None:
    record(store, "Q1")
    updated = store.upsert_customer("C@example.org", vip=True, plan="enterprise", company="株式会社サンプル")
    assert (updated.vip, updated.plan, updated.owner) == (True, "enterprise", "yamada")
    assert updated.company == "株式会社サンプル"
    with pytest.raises(StoreError):
        store.upsert_customer("c@example.org", owner_id="x")


def test_open_cases_by_level_and_away_agents(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0, level="high")
    record(store, "Q2", address="d@example.org", at=500.0, level="high")
    assert store.open_cases() == {"high": (2, 500.0)}
    store.set_away("yamada", True, 0)
    assert store.away() == {"yamada"}
    store.set_away("yamada", False, 1)
    assert store.away() == frozenset()


def test_a_closed_case_no_longer_counts_as_load_or_open(store: SQLiteStore) -> None:
    record(store, "Q1")
    assert store.set_status(1, "closed", 2000.0)
    assert store.open_load() == {}
    assert store.open_cases() == {}
    assert [c.status for c in store.cases()] == ["closed"]
    assert store.cases("open") == ()
    assert not store.set_status(99, "closed", 0)
