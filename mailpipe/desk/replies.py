"""The reply command by mail: release a reply the double-reply guard held.

    release+N@   the replies of case N that are held go out after all: what
                 ``mailpipe queue release ID`` does for an operator, for the agent who was told
                 in the held note. Only held replies of that case are touched.

The submission queue's spool file is changed the way the queue commands change it (its own
connection, one short transaction); the submission worker picks the released reply up at its
next look. Safe to run twice: a reply no longer held is not released again, and the second
answer says it is on its way.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mailpipe import spool
from mailpipe.desk.addresses import Usage
from mailpipe.desk.cases import case_number
from mailpipe.desk.outcome import Outcome, Request
from mailpipe.store import ReplyFate


class HeldReplies(Protocol):
    def reply_fates(self, case_id: int) -> tuple[ReplyFate, ...]: ...


def _check(arguments: tuple[str, ...]) -> str | None:
    if arguments and case_number(arguments) is None:
        return "release+N@: N is the case number, as in [#N]"
    return None


USAGES: dict[str, Usage] = {"release": Usage("release+N@: send case N's held replies after all", _check)}


@dataclass(frozen=True)
class ReplyCommands:
    store: HeldReplies
    spool_file: Path  # the submission queue's spool file

    @property
    def handlers(self) -> dict[str, object]:
        return {"release": self.release}

    def release(self, request: Request) -> Outcome:
        held = [f.queue_id for f in self.store.reply_fates(request.case.id) if f.fate == "held"]
        released: list[str] = []
        on_its_way: list[str] = []
        if held:
            with closing(spool.connect(self.spool_file)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                released = [qid for qid in held if spool.release(conn, qid, time.time())]
                conn.execute("COMMIT")
                if not released:
                    # Released before and not sent yet: the same command again (the agent's resend, or
                    # this mail run again after a crash) before the submission worker took the reply up.
                    on_its_way = [entry.id for entry in spool.entries(conn, held)
                                  if entry.overridden and entry.state != "hold"]
        if not released and on_its_way:
            return Outcome(f"案件 #{request.case.id} の保留中の返信は解除済みで、送信待ちです。\n"
                           f"Case #{request.case.id}: its held reply was released already and is on its way.")
        if not released:
            return Outcome(f"案件 #{request.case.id} に保留中の返信はありません。\n"
                           f"Case #{request.case.id} has no held reply.")
        return Outcome(f"案件 #{request.case.id} の保留中の返信を送信します（{request.author.id}）。\n"
                       f"Case #{request.case.id}: {len(released)} held repl{'y' if len(released) == 1 else 'ies'}"
                       f" released by {request.author.id}; the case shows the fate.")
