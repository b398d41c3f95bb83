"""The ``desk`` queue's stage table: parse → find the case → run; then the notes.

Every command of a message is run (one message may carry ``urgency+high@`` alone, or several
commands); a command that cannot run (no case found, the agent no longer on the roster) is not
an error of the queue: its author is told why in the same thread, and the message is done.
The author's note, and the case owner's when another agent acted on their case, carry the
case token and the level tag, so they thread and sort with the case's mail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailpipe.config import Agent
from mailpipe.deliver import Deliverer, notice
from mailpipe.deliver.headers import TAGS
from mailpipe.desk import cases, forwarded
from mailpipe.desk.addresses import Command, command_of
from mailpipe.desk.commands import USAGES, Commands, Outcome, Request
from mailpipe.message import ParsedMessage, parse
from mailpipe.spool import Message
from mailpipe.store import CaseRecord


class Cases(Protocol):
    def case(self, case_id: int) -> CaseRecord | None: ...

    def find_case(self, message_ids: tuple[str, ...], case_token: int | None,
                  customer_address: str) -> CaseRecord | None: ...


@dataclass(frozen=True)
class DeskWork:
    message: Message
    parsed: ParsedMessage | None = None
    author: Agent | None = None
    requests: tuple[Request, ...] = ()
    problem: str = ""  # why the commands cannot run, for the author's note
    outcomes: tuple[Outcome, ...] = ()


class Desk:
    def __init__(self, agents: Sequence[Agent], domains: frozenset[str], store: Cases, commands: Commands,
                 mailboxes: Deliverer, hostname: str, clock: Callable[[], float] = time.time):
        self._agents = {agent.id: agent for agent in agents}
        self._domains = domains
        self._store = store
        self._commands = commands
        self._mailboxes = mailboxes
        self._hostname = hostname
        self._clock = clock

    @property
    def stages(self) -> tuple[tuple[str, Callable[[DeskWork], DeskWork | Awaitable[DeskWork]]], ...]:
        return (("parse", self.parse), ("find", self.find), ("run", self.run))

    def parse(self, work: DeskWork) -> DeskWork:
        return dataclasses.replace(work, parsed=parse(work.message.data),
                                   author=self._agents.get(work.message.entry.envelope.submitter))

    async def find(self, work: DeskWork) -> DeskWork:
        return await asyncio.to_thread(self._find, work)

    def _find(self, work: DeskWork) -> DeskWork:
        parsed, entry = _parsed(work), work.message.entry
        if work.author is None:
            return dataclasses.replace(work, problem="the sender is not an agent on the roster")
        commands = [c for c in (command_of(r, self._domains, USAGES) for r in entry.envelope.rcpt_tos) if c]
        about = forwarded.about(work.message.data, parsed)
        numbers = [cases.case_number(c.arguments) if c.name != "urgency" else None for c in commands]
        # Each command acts on the case its own address names (close+1@ and close+2@ in one mail
        # close both), else on the case of what the mail passes on, else on the one case the
        # mail's other commands name (note+1@ beside urgency+high@).
        named = {number: self._store.case(number) for number in dict.fromkeys(numbers) if number is not None}
        missing = next((number for number, case in named.items() if case is None), None)
        if missing is not None:
            return dataclasses.replace(work, problem=f"案件 #{missing} はありません。\nNo case #{missing}.")
        unnamed = None
        if None in numbers:
            unnamed = self._store.case(about.case_id) if about.case_id is not None else \
                self._store.find_case(about.thread_ids, None, "")
            if unnamed is None and len(named) == 1:
                unnamed = next(iter(named.values()))
            if unnamed is None:
                return dataclasses.replace(work, problem=(
                    "どの案件か分かりません。顧客のメールかトリアージカードを転送してください。\n"
                    "Which case? Forward the customer's message or its triage card, or put [#N] in the"
                    " subject (or the address: note+N@)."))
        return dataclasses.replace(work, requests=tuple(
            Request(command, work.author, named[number] if number is not None else unnamed, about.message_id,
                    f"{work.message.id}.{index}", entry.received_at, parsed.new_text, about.queue_id)
            for index, (command, number) in enumerate(zip(commands, numbers, strict=True))))

    async def run(self, work: DeskWork) -> DeskWork:
        return dataclasses.replace(work, outcomes=tuple(
            [await asyncio.to_thread(self._commands.run, request) for request in work.requests]))

    async def hand_off(self, work: DeskWork) -> None:
        if work.author is None:
            return
        parsed = _parsed(work)
        case = work.requests[0].case if work.requests else None
        level = next((o.level for o in reversed(work.outcomes) if o.level), case.level if case else "")
        token = f"{TAGS.get(level, '')}[#{case.id}] " if case else ""
        body = work.problem or "\n\n".join(outcome.note for outcome in work.outcomes)
        names = ", ".join(_shown(request.command) for request in work.requests) or "desk"
        note = notice.compose(hostname=self._hostname, to=work.author.address,
                              subject=f"{token}{names}: {parsed.base_subject or parsed.subject}", body=body,
                              message_id=f"{work.message.id}.desk@{self._hostname}",
                              about=(*reversed(parsed.thread_ids), parsed.message_id), at=self._clock())
        item = (notice.derived(work.message, "K", note), note)
        owners = [self._agents.get(request.case.owner) for request in work.requests]
        for agent in dict.fromkeys(a for a in (work.author, *owners) if a is not None):
            await self._mailboxes.deliver(agent, [item])

    @staticmethod
    def summary(work: DeskWork) -> dict[str, str]:
        return {"agent": work.author.id if work.author else "",
                "commands": ",".join(_shown(r.command) for r in work.requests),
                "case": str(work.requests[0].case.id) if work.requests else "", "problem": work.problem[:80]}


def _shown(command: Command) -> str:
    return "+".join((command.name, *command.arguments))


def _parsed(work: DeskWork) -> ParsedMessage:
    assert work.parsed is not None, "stage order: parse first"
    return work.parsed
