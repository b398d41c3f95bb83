"""What a desk command is given (``Request``) and what it answers (``Outcome``): shared by the
route and every family of commands, so none of them imports another."""

from __future__ import annotations

from dataclasses import dataclass

from mailpipe.config import Agent
from mailpipe.desk.addresses import Command
from mailpipe.store import CaseRecord


@dataclass(frozen=True)
class Request:
    command: Command
    author: Agent
    case: CaseRecord
    message_id: str  # the customer message the command is about, when known
    queue_id: str
    at: float
    text: str = ""  # the agent's own words in the command's mail (a note's text)
    message_queue_id: str = ""  # the customer message's queue id, when its triage card was passed on


@dataclass(frozen=True)
class Outcome:
    note: str  # what the author (and the owner, when another agent) is told
    level: str = ""  # the case's level afterwards, for the note's tag
