"""The case commands by mail: a note on a case, closing and reopening it.

    note+N@     the mail's own text (above anything forwarded or quoted) becomes a note on case
                N, with its author: the phone call, who called, what was agreed. It shows in
                ``mailpipe cases show`` and in the case's next triage card.
    close+N@    case N is closed (a closed case is in nobody's load).
    reopen+N@   case N is open again.
    assign+N+AGENT@   case N (and its customer) belong to AGENT from now on; assign+N+TIER@
                (support, tech, dev) gives it to that tier's agent with the fewest open cases.

The case is the one numbered in the address; a forwarded message or ``[#N]`` in the subject
finds it when the address carries no number (``close@`` with the triage card forwarded). Each
is safe to run twice for one queue id: the note is keyed by it, and a status is a state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mailpipe.config import Agent
from mailpipe.desk.addresses import Usage
from mailpipe.desk.outcome import Outcome, Request


class CaseStore(Protocol):
    def add_case_note(self, case_id: int, kind: str, text: str, queue_id: str, at: float) -> bool: ...

    def set_status(self, case_id: int, status: str, at: float) -> bool: ...

    def reassign(self, case_id: int, agent: str, reason: str, queue_id: str, at: float) -> str | None: ...

    def open_load(self) -> dict[str, int]: ...


# A case number as a person writes it, in an address, a subject's [#N] or on the command line:
# ASCII digits (not "²", which str.isdigit takes), few enough for any store's integer.
CASE_NUMBER = re.compile(r"[0-9]{1,9}")


def case_number(arguments: tuple[str, ...]) -> int | None:
    """The case a command's address names (``note+123@``, ``assign+123+smith@`` → 123), if any."""
    return int(arguments[0]) if arguments and CASE_NUMBER.fullmatch(arguments[0]) else None


def _check(name: str):
    def check(arguments: tuple[str, ...]) -> str | None:
        if arguments and (len(arguments) > 1 or case_number(arguments) is None):
            return f"{name}+N@: N is the case number, as in [#N]"
        return None
    return check


def _check_assign(arguments: tuple[str, ...]) -> str | None:
    if len(arguments) != 2 or case_number(arguments) is None or not arguments[1]:
        return "assign+N+AGENT@ or assign+N+TIER@: N is the case number, AGENT an agent id, TIER support/tech/dev"
    return None


USAGES: dict[str, Usage] = {
    "note": Usage("note+N@: the mail's text becomes a note on case N (a phone call: who, what was agreed)",
                  _check("note")),
    "close": Usage("close+N@: close case N", _check("close")),
    "reopen": Usage("reopen+N@: open case N again", _check("reopen")),
    "assign": Usage("assign+N+AGENT@ or assign+N+TIER@: give case N to an agent, or a tier's least loaded",
                    _check_assign),
}


@dataclass(frozen=True)
class CaseCommands:
    store: CaseStore
    agents: Sequence[Agent] = ()

    @property
    def handlers(self) -> dict[str, object]:
        return {"note": self.note, "close": self.close, "reopen": self.reopen, "assign": self.assign}

    def assign(self, request: Request) -> Outcome:
        """To an agent by id, or to a tier: its least-loaded agent, unless the case's owner is
        already of that tier (a resent ``assign+N+tech@`` does not move the case again)."""
        wanted = request.command.arguments[1].lower()
        by_id = {a.id: a for a in self.agents}
        agent = by_id.get(wanted)
        if agent is None:
            tier = [a for a in self.agents if a.tier == wanted]
            owner = by_id.get(request.case.owner)
            if owner is not None and owner in tier:
                return Outcome(f"案件 #{request.case.id} は既に {owner.name}（{owner.id}, {wanted}）の担当です。\n"
                               f"Case #{request.case.id} already belongs to {owner.id} ({owner.name}), of tier"
                               f" {wanted}: unchanged.")
            load = self.store.open_load() if tier else {}
            agent = min(tier, key=lambda a: (load.get(a.id, 0), a.id)) if tier else None
        if agent is None:
            return Outcome(f"「{wanted}」という担当者・ティアはいません。\nNo agent or tier {wanted!r}: "
                           f"agents {', '.join(a.id for a in self.agents)}; tiers "
                           f"{', '.join(sorted({a.tier for a in self.agents}))}.")
        recorded = self.store.reassign(request.case.id, agent.id, f"reassigned by {request.author.id}",
                                       request.queue_id, request.at)
        owner = by_id.get(recorded or "", agent)
        return Outcome(f"案件 #{request.case.id} の担当を {owner.name}（{owner.id}, {owner.phone}）にしました"
                       f"（{request.author.id}）。\nCase #{request.case.id} now belongs to {owner.id} "
                       f"({owner.name}, {owner.phone}), reassigned by {request.author.id}.")

    def note(self, request: Request) -> Outcome:
        text = " ".join(request.text.split())
        if not text:
            return Outcome(f"案件 #{request.case.id}: メモが空です。本文にメモを書いてください。\n"
                           f"Case #{request.case.id}: the note is empty; write it in the mail's body.")
        self.store.add_case_note(request.case.id, "call", f"{text} ({request.author.id})", request.queue_id,
                                 request.at)
        return Outcome(f"案件 #{request.case.id} にメモを追加しました（{request.author.id}）。\n"
                       f"Note added to case #{request.case.id} by {request.author.id}:\n\n  {text}")

    def close(self, request: Request) -> Outcome:
        self.store.set_status(request.case.id, "closed", request.at)
        return Outcome(f"案件 #{request.case.id} を完了にしました（{request.author.id}）。\n"
                       f"Case #{request.case.id} closed by {request.author.id}.")

    def reopen(self, request: Request) -> Outcome:
        self.store.set_status(request.case.id, "open", request.at)
        return Outcome(f"案件 #{request.case.id} を再開しました（{request.author.id}）。\n"
                       f"Case #{request.case.id} reopened by {request.author.id}.")
