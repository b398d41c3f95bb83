"""The lead's digest: when it is due, and what the lead finds in their mailbox."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from mailpipe import config as configuration
from mailpipe.config.desk import DeskConfig
from mailpipe.digest import compose, due
from mailpipe.store.sqlite import SQLiteStore
from tests.conftest import mutt_view
from tests.test_delivery import wait_until
from tests.test_triage_pipeline import ALWAYS, send, text

TOKYO = ZoneInfo("Asia/Tokyo")
LEAD_ROSTER = {"agents": [
    {"id": "yamada", "name": "山田 太郎", "address": "yamada@example.test", "phone": "03-1234-5678", **ALWAYS},
    {"id": "suzuki", "name": "鈴木 花子", "address": "suzuki@example.test", "phone": "03-1234-0000", **ALWAYS}],
    "desk": {"lead": "suzuki"}}


def at(hour: int, minute: int, day: int = 30) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=TOKYO)


def test_a_digest_is_due_at_the_latest_scheduled_time_after_the_last_one() -> None:
    times = ("09:00", "17:30")
    assert due(at(9, 5), times, at(8, 0).timestamp()) == at(9, 0)
    assert due(at(9, 5), times, at(9, 1).timestamp()) is None
    assert due(at(18, 0), times, at(9, 1).timestamp()) == at(17, 30)
    assert due(at(8, 0), times, at(17, 31, day=28).timestamp()) == at(17, 30, day=29)  # missed while down: once


def lead_digests(daemon) -> list:
    return [mutt_view(p) for p in sorted(daemon.mailbox("suzuki").glob("new/*digest-*"))]


def test_the_lead_gets_unanswered_urgent_cases_load_and_bounces_in_japanese(make_daemon) -> None:
    daemon = make_daemon(LEAD_ROSTER)
    store = SQLiteStore(daemon.state / "store.sqlite")
    # One at a time, by the case each opens: two in flight may open their cases in either order,
    # and an urgent mail's copy to the lead makes two files of one message.
    send(daemon, "【緊急】全ユーザーのメールが届きません",
         "本日から全ユーザーのメールがGmailに届いていません。550-5.7.26 です。")
    wait_until(lambda: store.case(1), timeout=30)
    send(daemon, "請求書について", "請求書を再発行できますか。", sender="other@example.org")
    wait_until(lambda: store.case(2), timeout=30)
    store.record_reply(queue_id="R1", case_id=2, agent="yamada", message_id="r1@example.test", answers="",
                       subject="請求書について", at=time.time())
    store.set_fate("bounced", "other@example.org: mx said 550 5.1.1 no such user", time.time(),
                   queue_id="R1")
    store.correct_level(1, "critical", "yamada", time.time())
    store.close()
    daemon.stop()
    (daemon.state / "digest.last").write_text(f"{time.time() - 3600}\n")
    now = datetime.now(TOKYO)
    daemon.settings["desk"] = {"lead": "suzuki", "digest_times": [now.strftime("%H:%M")]}
    daemon.start()
    wait_until(lambda: lead_digests(daemon), timeout=30)
    (digest,) = lead_digests(daemon)
    assert text(digest["Subject"]).startswith("[mailpipe] 本日の状況 ")
    body = digest.get_payload(decode=True).decode()
    assert "未回答の緊急・高優先度ケース (1)" in body and "#1 critical" in body and "担当 yamada" in body
    assert "担当者ごとの対応中ケース数" in body and "yamada" in body and "suzuki" in body
    assert "前回以降に届かなかった返信 (1)" in body and "550 5.1.1 no such user" in body
    assert "前回以降の緊急度の修正 (1)" in body and "(yamada)" in body
    assert "JST" in body


def test_the_digest_reads_in_english_by_config(tmp_path) -> None:
    defaults = configuration.load(None)
    config = dataclasses.replace(defaults, desk=DeskConfig(defaults.agents[0].id, ("09:00",), "en", ""))
    store = SQLiteStore(tmp_path / "store.sqlite")
    subject, body = compose(store, config, time.time(), time.time() - 3600)
    store.close()
    assert subject.startswith("[mailpipe] desk digest ")
    assert "Unanswered critical and high cases (0)" in body and "Open cases per agent" in body
    assert "Replies that bounced since the last digest (0)" in body
    assert "Urgency corrections since the last digest (0)" in body
