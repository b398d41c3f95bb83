"""What each desk command does, and how it is addressed: the table the desk queue runs.

A command gets what it is about (the case, the customer message) and who sent it, does its
work in the store, and returns the note its author gets. Each must be safe to run twice for one
queue id (a crash between its work and the spool's delete runs it again).

    urgency+LEVEL@   the case's urgency is LEVEL (critical, high, normal, low): the case's level
                     changes, the correction is kept in its history with author and time, and
                     the urgency model learns from the customer's message at once.
    note+N@, close+N@, reopen+N@, assign+N+AGENT@   the case commands (``desk.cases``).
    release+N@       the held replies of case N go out (``desk.replies``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mailpipe.config import Agent
from mailpipe.desk import cases, replies
from mailpipe.desk.addresses import Usage
from mailpipe.desk.cases import CaseCommands, CaseStore
from mailpipe.desk.outcome import Outcome as Outcome
from mailpipe.desk.outcome import Request as Request
from mailpipe.desk.replies import HeldReplies, ReplyCommands
from mailpipe.metrics import Metrics
from mailpipe.store import Correction
from mailpipe.triage.conditions import LEVELS


class CorrectionStore(Protocol):
    def correct_level(self, case_id: int, level: str, author: str, at: float, *, queue_id: str | None = None,
                      message_id: str = "", message_queue_id: str = "",
                      document: str | None = None) -> Correction | None: ...


class Store(CorrectionStore, CaseStore, HeldReplies, Protocol):
    """Everything the commands write."""


@dataclass(frozen=True)
class Commands:
    """The commands with what they act on: the store, the metrics, and the model to retrain.
    Each family of commands lives in a module of its own (urgency here, ``cases``)."""

    store: Store
    metrics: Metrics
    learn: Callable[[], None]
    spool_file: Path | None = None  # the submission queue's, for release+N@
    agents: Sequence[Agent] = ()  # the roster, for assign+N+AGENT@

    def run(self, request: Request) -> Outcome:
        handlers = {"urgency": self.urgency, **CaseCommands(self.store, self.agents).handlers}
        if self.spool_file is not None:
            handlers.update(ReplyCommands(self.store, self.spool_file).handlers)
        return handlers[request.command.name](request)  # type: ignore[operator]

    def urgency(self, request: Request) -> Outcome:
        level = request.command.arguments[0]
        correction = self.store.correct_level(request.case.id, level, request.author.id, request.at,
                                              queue_id=request.queue_id, message_id=request.message_id,
                                              message_queue_id=request.message_queue_id)
        if correction is None:
            return Outcome(f"案件 #{request.case.id} が見つかりません / No case #{request.case.id}.")
        if not correction.recorded:  # this command again, or the same word on the same message
            return Outcome(f"案件 #{request.case.id} の緊急度: {correction.from_level} → {correction.to_level}"
                           f"（{correction.author}、記録済み）\nCase #{request.case.id} urgency:"
                           f" {correction.from_level} → {correction.to_level}, by {correction.author}: already"
                           " recorded, nothing more to learn.", correction.to_level)
        self.metrics.corrections.labels(correction.from_level, correction.to_level).inc()
        self.learn()
        return Outcome(f"案件 #{request.case.id} の緊急度: {correction.from_level} → {correction.to_level}"
                       f"（{request.author.id}）\nCase #{request.case.id} urgency: {correction.from_level} →"
                       f" {correction.to_level}, by {request.author.id}. The urgency model learns from it now.",
                       correction.to_level)


def _check_level(arguments: tuple[str, ...]) -> str | None:
    if len(arguments) != 1 or arguments[0] not in LEVELS:
        return f"urgency+LEVEL@: LEVEL is one of {', '.join(LEVELS)}"
    return None


USAGES: dict[str, Usage] = {
    "urgency": Usage("urgency+LEVEL@ (critical, high, normal, low): correct a case's urgency", _check_level),
    **cases.USAGES,
    **replies.USAGES,
}
