"""Messages mailpipe writes about another message, for an agent's mailbox.

``compose`` writes a short note (a held reply, a bounce of the agent's mail): plain UTF-8 text
from ``mailpipe@<hostname>``, ``Auto-Submitted: auto-generated``, with In-Reply-To and
References pointing at the message concerned so mail clients show it in that thread.
``derived`` wraps such a note (or a triage card, or a DSN) for delivery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

from mailpipe.deliver import headers
from mailpipe.spool import Message


def derived(message: Message, suffix: str, data: bytes) -> Message:
    """``data`` as a message of its own about ``message``: its own id (the spooled id plus
    ``suffix``, so Maildir delivery stays idempotent for it too) and the null envelope sender
    of an automatic message (RFC 3834), so nothing ever bounces back to it."""
    entry = message.entry
    return Message(dataclasses.replace(entry, id=message.id + suffix,
                                       envelope=dataclasses.replace(entry.envelope, mail_from="")), data)


def compose(*, hostname: str, to: str, subject: str, body: str, message_id: str, about: str | Sequence[str],
            at: float) -> bytes:
    """``about``: the Message-ID the note answers, or the thread's ids oldest first (the case's
    customer message, then the agent's reply), so the note sits under the case in any client."""
    fields = [("From", f"mailpipe <mailpipe@{hostname}>"), ("To", to), ("Subject", subject),
              ("Date", format_datetime(datetime.fromtimestamp(at, UTC))), ("Message-ID", f"<{message_id}>"),
              ("Auto-Submitted", "auto-generated"), ("MIME-Version", "1.0"),
              ("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "8bit")]
    fields += thread_fields((about,) if isinstance(about, str) else about)
    text = body.replace("\r\n", "\n").replace("\n", "\r\n")
    return b"".join(headers.field(name, value) for name, value in fields) + b"\r\n" + text.encode("utf-8")


def thread_fields(ids: Sequence[str]) -> list[tuple[str, str]]:
    """In-Reply-To (the last of ``ids``) and References (all of them, oldest first)."""
    wanted = [f"<{i.strip('<>')}>" for i in dict.fromkeys(ids) if i and i.strip("<>")]
    if not wanted:
        return []
    return [("In-Reply-To", wanted[-1]), ("References", " ".join(wanted))]
