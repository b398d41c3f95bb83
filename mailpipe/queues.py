"""The queues, declared once, in the manner of Postfix's ``master.cf``.

    # name      spool file        route: what the queue's worker runs
    inbound     inbound.sqlite    triage.stages     triage, then each owner's mailbox
    submission  outbound.sqlite   outbound.replies  an agent's reply: case, stamp, sign, one message per domain
    outbound    outbound.sqlite   outbound.queue    one attempt at the recipient's MX (or the smarthost)
    desk        outbound.sqlite   desk.route        an agent's command by mail (urgency+LEVEL@…)

A queue's name is the spool's ``listener`` column, its worker's name and the ``queue`` label of
its metrics; ``submission``, ``outbound`` and ``desk`` share one spool file (the submission
listener writes agents' mail there), so that a reply passes from one queue to the next in one
transaction (``spool.replace``). The daemon opens one ``Spool`` per
file and one worker per queue from this table; listeners, stages and the queue commands name
a queue by the constants below, never by a string of their own. Imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Queue:
    name: str
    spool: str  # the spool file's stem under the spool directory, and its metrics label
    route: str  # the module whose stage table and hand-off the queue's worker runs

    @property
    def file(self) -> str:
        return f"{self.spool}.sqlite"


INBOUND = Queue("inbound", "inbound", "triage.stages")
SUBMISSION = Queue("submission", "outbound", "outbound.replies")
OUTBOUND = Queue("outbound", "outbound", "outbound.queue")
DESK = Queue("desk", "outbound", "desk.route")
QUEUES = (INBOUND, SUBMISSION, OUTBOUND, DESK)
# The spool files, each once, in the order of the table.
SPOOLS = tuple(dict.fromkeys(queue.spool for queue in QUEUES))


def spool_files(directory: Path) -> list[Path]:
    """The spool files that exist under ``directory``, for the queue commands."""
    return [path for path in (directory / f"{name}.sqlite" for name in SPOOLS) if path.exists()]
