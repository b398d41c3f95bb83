"""The store, on both backends (SQLite and PostgreSQL): migrations, customers, cases,
assignments, idempotent recording, and what replies, reports and incidents keep there."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

import psycopg
import pytest

from mailpipe.store import CONTACTS_KEPT, StoreUnavailable
from mailpipe.store.postgres import PostgresStore
from mailpipe.store.sqlite import MIGRATIONS, SQLiteStore, StoreError
from tests.pg_peer import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        opened = SQLiteStore(tmp_path / "store.sqlite")
        yield opened
        opened.close()
        return
    with fresh_database() as url:
        opened = PostgresStore(url)
        yield opened
        opened.close()


def record(store: SQLiteStore, queue_id: str, *, case_id: int | None = None, owner: str = "yamada",
           address: str = "c@example.org", at: float = 1000.0, level: str = "normal", score: float = 1.0,
           document: str = ""):
    return store.record_inbound(queue_id=queue_id, address=address, name="C", message_id=f"{queue_id}@x",
                                subject="s", level=level, score=score, rules="R(1)", case_id=case_id,
                                decide=lambda owner_now, load: ((owner, "owner", "new customer; least loaded"),),
                                escalated_to="", at=at, document=document)


def test_a_new_sqlite_database_is_migrated_to_the_latest_schema(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    store.close()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_new_postgresql_database_is_migrated_once_to_the_latest_schema() -> None:
    with fresh_database() as url:
        first, second = PostgresStore(url), PostgresStore(url)
        assert first.migrate() == second.migrate() == len(MIGRATIONS)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version FROM mailpipe_schema").fetchall() == [(len(MIGRATIONS),)]
        first.close()
        second.close()


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


def test_a_recording_that_fails_half_way_leaves_nothing_and_the_next_write_goes_through(store: SQLiteStore) -> None:
    def fail(owner_now: str, load: Mapping[str, int]) -> tuple:
        raise RuntimeError("decide failed")  # after the customer's row was written

    with pytest.raises(RuntimeError, match="decide failed"):
        store.record_inbound(queue_id="Q1", address="c@example.org", name="C", message_id="Q1@x", subject="s",
                             level="normal", score=1.0, rules="", case_id=None, decide=fail, escalated_to="",
                             at=1000.0)
    assert store.customer("c@example.org") is None
    assert record(store, "Q1").new_case


def test_a_message_threads_into_a_case_by_message_id_or_token_of_the_same_customer(store: SQLiteStore) -> None:
    record(store, "Q1")
    assert store.find_case(("Q1@x",), None, "other@example.org").id == 1
    assert store.find_case((), 1, "C@Example.org").id == 1
    assert store.find_case((), 1, "other@example.org") is None
    continued = record(store, "Q2", case_id=1, level="high", score=6)
    assert not continued.new_case
    assert (continued.case.level, continued.case.score) == ("high", 6)


def test_a_reply_threads_into_a_case_only_when_it_goes_to_the_cases_customer(store: SQLiteStore) -> None:
    record(store, "Q1")
    assert store.find_case(("Q1@x",), None, "C@example.org", customers_thread_only=True).id == 1
    assert store.find_case(("Q1@x",), None, "colleague@example.org", customers_thread_only=True).id == 1
    assert store.find_case(("Q1@x",), None, "vendor@example.net", customers_thread_only=True) is None
    assert store.find_case(("Q1@x",), None, "x@example_org", customers_thread_only=True) is None


def test_a_reply_to_a_customers_second_address_threads_into_the_case(store: SQLiteStore) -> None:
    record(store, "Q1")
    record(store, "Q2", case_id=1, address="taro.personal@gmail.example", at=2000.0)
    found = store.find_case(("Q2@x", "Q1@x"), 1, "taro.personal@gmail.example", customers_thread_only=True)
    assert found is not None and found.id == 1


def test_the_profile_carries_recent_contacts_the_open_case_and_history(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0)
    record(store, "Q2", at=2000.0)
    profile = store.profile("c@example.org", now=3000.0)
    assert profile.contacts == (1000.0, 2000.0)
    assert profile.open_case.id == 1
    assert [c.id for c in profile.recent_cases] == [2, 1]


def test_the_profile_keeps_only_the_latest_contacts_of_a_chatty_sender(store: SQLiteStore) -> None:
    for n in range(CONTACTS_KEPT + 20):
        record(store, f"Q{n}", case_id=1 if n else None, at=1000.0 + n)
    contacts = store.profile("c@example.org", now=5000.0).contacts
    assert contacts == tuple(1000.0 + n for n in range(20, CONTACTS_KEPT + 20))


def test_a_cases_thread_lists_its_messages_and_assignments_in_order(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0, level="high", score=6)
    store.record_reply(queue_id="R1", case_id=1, agent="yamada", message_id="r1@x", answers="Q1@x", subject="Re: s",
                       at=1600.0)
    record(store, "Q2", case_id=1, at=2000.0)
    messages = store.case_messages(1)
    assert [(m.direction, m.at, m.agent or m.level) for m in messages] == [
        ("in", 1000.0, "high"), ("out", 1600.0, "yamada"), ("in", 2000.0, "normal")]
    assert [(a.agent, a.role, a.at) for a in store.case_assignments(1)] == [
        ("yamada", "owner", 1000.0), ("yamada", "owner", 2000.0)]


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


@pytest.mark.parametrize(("first", "then", "expected"), [
    (("high", 20.0), ("critical", 17.0), ("critical", 20.0)),  # a capped high with more points, then a critical
    (("critical", 17.0), ("high", 20.0), ("critical", 20.0)),
    (("high", 9.0), ("normal", 2.0), ("high", 9.0)),
])
def test_a_case_is_as_urgent_as_its_most_urgent_message_not_its_highest_score(store: SQLiteStore, first, then,
                                                                               expected) -> None:
    case = record(store, "Q1", level=first[0], score=first[1]).case
    updated = record(store, "Q2", case_id=case.id, level=then[0], score=then[1]).case
    assert (updated.level, updated.score) == expected


def test_a_closed_case_no_longer_counts_as_load_or_open(store: SQLiteStore) -> None:
    record(store, "Q1")
    assert store.set_status(1, "closed", 2000.0)
    assert store.open_load() == {}
    assert store.open_cases() == {}
    assert [c.status for c in store.cases()] == ["closed"]
    assert store.cases("open") == ()
    assert not store.set_status(99, "closed", 0)


def test_a_new_case_is_assigned_inside_the_transaction_from_the_customers_owner_and_load_there(store) -> None:
    record(store, "Q1", owner="yamada")
    seen = []

    def decide(owner_now: str, load_now: Mapping[str, int]) -> tuple[tuple[str, str, str], ...]:
        seen.append((owner_now, dict(load_now)))
        return ((owner_now, "owner", "sticky"),)

    recorded = store.record_inbound(queue_id="Q2", address="c@example.org", name="C", message_id="Q2@x", subject="s",
                                    level="normal", score=1, rules="", case_id=None, decide=decide, escalated_to="",
                                    at=1001.0)
    assert seen == [("yamada", {"yamada": 1})]
    assert recorded.case.owner == "yamada" and recorded.assignments[0].reason == "sticky"


def test_a_threaded_message_is_assigned_from_its_cases_owner(store) -> None:
    record(store, "Q1", owner="smith")
    store.upsert_customer("c@example.org", owner="yamada")  # the customer changed hands since
    seen = []

    def decide(owner_now: str, load_now: Mapping[str, int]) -> tuple[tuple[str, str, str], ...]:
        seen.append(owner_now)
        return ((owner_now, "owner", "sticky"),)

    store.record_inbound(queue_id="Q2", address="c@example.org", name="C", message_id="Q2@x", subject="s",
                         level="normal", score=1, rules="", case_id=1, decide=decide, escalated_to="", at=1001.0)
    assert seen == ["smith"]


def test_the_open_load_counts_a_case_once_per_agent_in_any_of_its_roles(store) -> None:
    record(store, "Q1", owner="yamada")
    store.record_inbound(queue_id="Q2", address="d@example.org", name="D", message_id="Q2@x", subject="s",
                         level="high", score=5, rules="", case_id=None, escalated_to="tech", at=1001.0,
                         decide=lambda owner_now, load: (("smith", "owner", "new"), ("sato", "handler", "away"),
                                                         ("smith", "escalation", "tech")))
    assert store.open_load() == {"yamada": 1, "smith": 1, "sato": 1}


def test_a_reply_answers_its_case_only_once_the_customers_side_accepts_it(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0)
    queued = store.record_reply(queue_id="R1", case_id=1, agent="yamada", message_id="r1@x", answers="Q1@x",
                                subject="s", at=1600.0)
    again = store.record_reply(queue_id="R1", case_id=1, agent="yamada", message_id="r1@x", answers="Q1@x",
                               subject="s", at=1600.0)
    assert (queued.case.status, queued.case.first_response_at, again.already_recorded) == ("open", None, True)
    sent = store.set_fate("sent", "accepted by mx.example.org (250)", 1700.0, queue_id="R1")
    repeat = store.set_fate("sent", "accepted by mx.example.org (250)", 1700.0, queue_id="R1")
    assert (sent.changed, sent.first_response, sent.case.status, sent.case.first_response_at) == (
        True, True, "answered", 1700.0)
    assert (repeat.changed, repeat.first_response) == (False, False)
    assert [(f.fate, f.detail) for f in store.reply_fates(1)] == [("sent", "accepted by mx.example.org (250)")]


def test_a_bounced_reply_opens_its_answered_case_again(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0)
    store.record_reply(queue_id="R1", case_id=1, agent="yamada", message_id="r1@x", answers="Q1@x", subject="s",
                       at=1600.0)
    store.set_fate("sent", "accepted by mx.example.org (250)", 1700.0, queue_id="R1")
    bounced = store.set_fate("bounced", "550 5.1.1 no such user", 1800.0, message_id="r1@x")
    assert (bounced.reopened, bounced.case.status, bounced.fate.fate) == (True, "open", "bounced")
    assert store.set_fate("deferred", "451 later", 1900.0, queue_id="R1").changed is False
    assert [f.queue_id for f in store.bounced_since(1750.0)] == ["R1"]
    assert store.set_fate("sent", "x", 1.0, queue_id="UNKNOWN") is None


def test_a_held_reply_is_kept_with_its_reason_and_queued_once_released(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0)
    store.record_reply(queue_id="R1", case_id=1, agent="smith", message_id="", answers="Q1@x", subject="s",
                       at=1600.0, fate="held", detail="double reply")
    assert store.earlier_reply(1, "Q1@x", other_than="yamada", since=0.0, queue_id="R2") is None
    store.record_reply(queue_id="R1", case_id=1, agent="smith", message_id="r1@x", answers="Q1@x", subject="s",
                       at=1600.0)
    (reply,) = store.reply_fates(1)
    assert (reply.fate, reply.message_id) == ("queued", "r1@x")


def test_customers_are_found_by_phone_however_the_number_is_written(store: SQLiteStore) -> None:
    store.upsert_customer("a@example.org", phone="03-1234-5678")
    store.upsert_customer("b@example.org", phone="+1 415 555 0100")
    for spelling in ("03-1234-5678", "+81 3 1234 5678", "0312345678", "０３－１２３４－５６７８"):
        assert [c.address for c in store.customers_by_phone(spelling)] == ["a@example.org"]
    assert store.customers_by_phone("not a phone") == ()


def test_an_earlier_reply_by_another_agent_to_the_same_message_is_found(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0)
    assert store.answered_message(1, ("unknown@x",)) == "Q1@x"
    store.record_reply(queue_id="R1", case_id=1, agent="yamada", message_id="r1@x", answers="Q1@x", subject="s",
                       at=1600.0)
    found = store.earlier_reply(1, "Q1@x", other_than="smith", since=1500.0, queue_id="R2")
    assert (found.agent, found.at) == ("yamada", 1600.0)
    assert store.earlier_reply(1, "Q1@x", other_than="yamada", since=1500.0, queue_id="R2") is None
    assert store.earlier_reply(1, "Q1@x", other_than="smith", since=1601.0, queue_id="R2") is None


def acknowledged(store, queue_id: str, at: float, case_id: int | None = None) -> bool:
    return store.record_inbound(queue_id=queue_id, address="c@example.org", name="C", message_id=f"{queue_id}@x",
                                subject="s", level="normal", score=1, rules="", case_id=case_id, escalated_to="",
                                decide=lambda owner_now, load: (("yamada", "owner", "sticky"),), at=at,
                                autoreply_window=86400).autoreply


def test_one_automatic_acknowledgement_per_customer_per_window(store: SQLiteStore) -> None:
    assert acknowledged(store, "Q1", at=1000.0)
    assert not acknowledged(store, "Q2", at=2000.0)
    assert acknowledged(store, "Q3", at=90000.0)


def test_a_message_recorded_again_after_a_crash_keeps_its_acknowledgement(store: SQLiteStore) -> None:
    assert acknowledged(store, "Q1", at=1000.0)
    assert acknowledged(store, "Q1", at=1000.0)


def test_a_continued_case_takes_no_acknowledgement_window(store: SQLiteStore) -> None:
    record(store, "Q1", at=1000.0)
    assert not acknowledged(store, "Q2", at=90000.0, case_id=1)
    assert acknowledged(store, "Q3", at=90001.0)


def test_passwords_are_stored_per_agent(store: SQLiteStore) -> None:
    assert store.password_hash("yamada") is None
    store.set_password("yamada", "$scrypt$x", 1.0)
    store.set_password("yamada", "$scrypt$y", 2.0)
    assert store.password_hash("yamada") == "$scrypt$y"


def test_an_unreachable_postgresql_is_unavailable_not_an_error() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:9/none", timeout=1)
    with pytest.raises(StoreUnavailable):
        store.customer("a@example.org")
    store.close()


def test_a_sqlite_store_moves_to_postgresql_without_losing_anything(tmp_path: Path) -> None:
    source = SQLiteStore(tmp_path / "store.sqlite")
    record(source, "Q1", at=1000.0)
    record(source, "Q2", case_id=1, at=2000.0)
    source.upsert_customer("c@example.org", vip=True, notes="決裁者")
    source.record_reply(queue_id="R1", case_id=1, agent="yamada", message_id="r1@x", answers="Q2@x", subject="s",
                        at=2000.0)
    source.set_fate("sent", "accepted by mx.example.org (250)", 2100.0, queue_id="R1")
    source.set_password("yamada", "$scrypt$x", 1.0)
    source.correct_level(1, "high", "yamada", 2200.0, document="全て消えました")
    rows = list(source.dump())
    with fresh_database() as url:
        target = PostgresStore(url)
        assert target.load(rows) == len(rows)
        assert list(target.dump()) == rows
        profile = target.profile("c@example.org", now=3000.0)
        assert profile.customer.vip and profile.customer.notes == "決裁者"
        assert profile.open_case.status == "answered" and profile.open_case.first_response_at == 2100.0
        record(target, "Q3", address="new@example.org", at=4000.0)  # identities continue after the import
        assert [c.id for c in target.cases()] == [2, 1]
        assert target.corrected() == (("全て消えました", "high", "yamada"),)
        with pytest.raises(StoreError, match="already has customers"):
            target.load(rows)
        target.close()
    source.close()


def test_a_correction_sets_the_cases_level_and_is_kept_in_its_history(store: SQLiteStore) -> None:
    record(store, "Q1", level="normal", document="リストが空です")
    correction = store.correct_level(1, "critical", "yamada", 2000.0)
    assert (correction.from_level, correction.to_level, correction.author) == ("normal", "critical", "yamada")
    assert store.case(1).level == "critical"
    assert store.case_corrections(1) == (correction,)


def test_a_correction_learns_from_the_cases_latest_customer_message_or_the_text_given(store: SQLiteStore) -> None:
    record(store, "Q1", document="first words")
    record(store, "Q2", case_id=1, at=2000.0, document="latest words")
    store.correct_level(1, "high", "yamada", 3000.0)
    store.correct_level(1, "low", "smith", 3100.0, document="forwarded words")
    assert store.corrected() == (("latest words", "high", "yamada"), ("forwarded words", "low", "smith"))


def test_the_latest_correction_of_a_text_is_the_one_learned(store: SQLiteStore) -> None:
    record(store, "Q1", document="same words")
    store.correct_level(1, "high", "yamada", 2000.0)
    store.correct_level(1, "normal", "smith", 2100.0)
    assert store.corrected() == (("same words", "normal", "smith"),)


def test_correcting_a_case_that_does_not_exist_changes_nothing(store: SQLiteStore) -> None:
    assert store.correct_level(99, "high", "yamada", 2000.0) is None
    assert store.corrected() == ()


@pytest.mark.parametrize("named", [{"message_id": "Q1@x"}, {"message_queue_id": "Q1"}],
                         ids=["by-message-id", "by-its-triage-cards-queue-id"])
def test_a_correction_learns_from_the_message_it_names(store: SQLiteStore, named: dict[str, str]) -> None:
    record(store, "Q1", document="first words")
    record(store, "Q2", case_id=1, at=2000.0, document="latest words")
    store.correct_level(1, "high", "yamada", 3000.0, **named)
    assert store.corrected() == (("first words", "high", "yamada"),)


def test_a_correction_mailed_again_after_a_crash_is_recorded_once(store: SQLiteStore) -> None:
    record(store, "Q1", document="words")
    first = store.correct_level(1, "critical", "yamada", 3000.0, queue_id="C1")
    again = store.correct_level(1, "critical", "yamada", 3500.0, queue_id="C1")
    assert again == first and len(store.case_corrections(1)) == 1
    assert first.recorded and not again.recorded


def test_a_correction_naming_a_message_the_case_lacks_learns_nothing(store: SQLiteStore) -> None:
    record(store, "Q1", document="first words")
    correction = store.correct_level(1, "high", "yamada", 3000.0, message_id="elsewhere@x")
    assert correction.recorded and store.case(1).level == "high"
    assert store.corrected() == ()


def test_the_same_word_again_on_the_same_message_is_not_recorded_again(store: SQLiteStore) -> None:
    record(store, "Q1", level="normal", document="words")
    first = store.correct_level(1, "critical", "yamada", 3000.0, queue_id="C1", message_id="Q1@x")
    again = store.correct_level(1, "critical", "yamada", 3100.0, queue_id="C2", message_id="Q1@x")
    assert not again.recorded and again == first
    assert store.case_corrections(1) == (first,)


def test_a_word_taken_back_and_given_again_is_recorded_each_time(store: SQLiteStore) -> None:
    record(store, "Q1", level="normal", document="words")
    levels = ["critical", "high", "critical"]
    made = [store.correct_level(1, level, "yamada", 3000.0 + i, queue_id=f"C{i}") for i, level in enumerate(levels)]
    assert all(correction.recorded for correction in made)
    assert [c.to_level for c in store.case_corrections(1)] == levels


def test_an_automatic_message_files_its_new_case_closed_outside_anyones_load(store: SQLiteStore) -> None:
    recorded = store.record_inbound(queue_id="A1", address="ooo@example.org", name="", message_id="a1@x",
                                    subject="Out of office", level="low", score=-8, rules="AUTO_REPLY(-8)",
                                    case_id=None, decide=lambda owner, load: (("yamada", "owner", "least loaded"),),
                                    escalated_to="", at=1000.0, automatic=True)
    assert recorded.case.status == "closed"
    assert store.open_load() == {}


def test_an_automatic_message_does_not_reopen_its_case(store: SQLiteStore) -> None:
    record(store, "Q1")
    store.set_status(1, "closed", 1500.0)
    store.record_inbound(queue_id="A1", address="c@example.org", name="", message_id="a1@x", subject="Re: s",
                         level="low", score=-8, rules="", case_id=1,
                         decide=lambda owner, load: ((owner, "owner", "sticky"),), escalated_to="", at=2000.0,
                         automatic=True)
    assert store.case(1).status == "closed"


def test_a_reassigned_case_and_its_customer_belong_to_the_new_owner_once_per_queue_id(store: SQLiteStore) -> None:
    record(store, "Q1", owner="yamada")
    assert store.reassign(1, "smith", "reassigned by yamada", "C1", 2000.0) == "smith"
    # The same command again, its tier's least-loaded agent now another: the owner stands.
    assert store.reassign(1, "sato", "reassigned by yamada", "C1", 2100.0) == "smith"
    assert store.case(1).owner == "smith" and store.customer("c@example.org").owner == "smith"
    assert [(a.agent, a.reason) for a in store.case_assignments(1)][-1] == ("smith", "reassigned by yamada")
    assert len(store.case_assignments(1)) == 2
    assert store.reassign(99, "smith", "x", "C2", 2000.0) is None


def test_the_store_knows_which_queued_messages_the_send_queue_began_sending(store) -> None:
    store.record_sent("<ack1@example.test>", "Q1-ack", 1000.0)
    assert store.sent_as("Q1-ack") and not store.sent_as("Q2-ack")
