"""The case commands by mail: a note on a case, closing and reopening it.

    note+N@     the mail's own text (above anything forwarded or quoted) becomes a note on case
                N, with its author: the phone call, who called, what was agreed. It shows in
                ``mailpipe cases show`` and in the case's next triage card.
    close+N@    case N is closed (a closed case is in nobody's load).
    reopen+N@   case N is open again.

The case is the one numbered in the address; a forwarded message or ``[#N]`` in the subject
finds it when the address carries no number (``close@`` with the triage card forwarded). Each
is safe to run twice for one queue id: the note is keyed by it, and a status is a state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailpipe.desk.addresses import Usage
from mailpipe.desk.outcome import Outcome, Request


class CaseStore(Protocol):
    def add_case_note(self, case_id: int, kind: str, text: str, queue_id: str, at: float) -> bool: ...

    def set_status(self, case_id: int, status: str, at: float) -> bool: ...


def case_number(arguments: tuple[str, ...]) -> int | None:
    """The case a command's address names (``note+123@`` → 123), if it names one."""
    return int(arguments[0]) if len(arguments) == 1 and arguments[0].isdigit() else None


def _check(name: str):
    def check(arguments: tuple[str, ...]) -> str | None:
        if arguments and case_number(arguments) is None:
            return f"{name}+N@: N is the case number, as in [#N]"
        return None
    return check


USAGES: dict[str, Usage] = {
    "note": Usage("note+N@: the mail's text becomes a note on case N (a phone call: who, what was agreed)",
                  _check("note")),
    "close": Usage("close+N@: close case N", _check("close")),
    "reopen": Usage("reopen+N@: open case N again", _check("reopen")),
}


@dataclass(frozen=True)
class CaseCommands:
    store: CaseStore

    @property
    def handlers(self) -> dict[str, object]:
        return {"note": self.note, "close": self.close, "reopen": self.reopen}

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
