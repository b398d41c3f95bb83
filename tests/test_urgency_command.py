"""The urgency+LEVEL@ command against a real store: what it counts, learns and tells its author."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpipe.config import Agent
from mailpipe.desk.addresses import Command
from mailpipe.desk.commands import Commands
from mailpipe.desk.outcome import Outcome, Request
from mailpipe.metrics import Metrics
from mailpipe.store.sqlite import SQLiteStore
from tests.test_store import record

YAMADA = Agent("yamada", "Yamada", "yamada@example.test")


@pytest.fixture
def desk(tmp_path: Path):
    store = SQLiteStore(tmp_path / "store.sqlite")
    record(store, "Q1", level="normal", document="全員に届いていません")
    fits: list[None] = []
    yield Commands(store, Metrics(), lambda: fits.append(None)), fits
    store.close()


def correct(commands: Commands, level: str, queue_id: str) -> Outcome:
    """Case 1's message Q1 redirected to urgency+LEVEL@, as the command ``queue_id``."""
    command = Command("urgency", (level,), f"urgency+{level}@example.test")
    return commands.run(Request(command, YAMADA, commands.store.case(1), "Q1@x", queue_id, 2000.0))


def corrections(commands: Commands, source: str, target: str) -> float:
    value = commands.metrics.registry.get_sample_value("mailpipe_triage_corrections_total",
                                                       {"from": source, "to": target})
    return value or 0.0


def test_a_correction_is_counted_and_learned_once(desk) -> None:
    commands, fits = desk
    outcome = correct(commands, "critical", "C1.0")
    assert "normal → critical" in outcome.note and outcome.level == "critical"
    assert corrections(commands, "normal", "critical") == 1 and len(fits) == 1


def test_a_command_run_again_after_a_failed_hand_off_is_not_counted_or_learned_again(desk) -> None:
    commands, fits = desk
    correct(commands, "critical", "C1.0")
    again = correct(commands, "critical", "C1.0")
    assert "already recorded" in again.note
    assert corrections(commands, "normal", "critical") == 1 and len(fits) == 1


def test_a_redirect_sent_twice_is_counted_and_learned_once(desk) -> None:
    commands, fits = desk
    correct(commands, "critical", "C1.0")
    correct(commands, "critical", "C2.0")
    assert corrections(commands, "normal", "critical") == 1 and len(fits) == 1
    assert corrections(commands, "critical", "critical") == 0
