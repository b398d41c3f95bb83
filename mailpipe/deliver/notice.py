"""Short notes from mailpipe to an agent's mailbox, threaded under the message they are about.

Used for a held reply, a bounce of the agent's mail, and the like: a plain UTF-8 text from
``mailpipe@<hostname>``, ``Auto-Submitted: auto-generated``, with In-Reply-To and References
pointing at the message concerned so mail clients show it in that thread.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from mailpipe.deliver import headers


def compose(*, hostname: str, to: str, subject: str, body: str, message_id: str, about: str, at: float) -> bytes:
    fields = [("From", f"mailpipe <mailpipe@{hostname}>"), ("To", to), ("Subject", subject),
              ("Date", format_datetime(datetime.fromtimestamp(at, UTC))), ("Message-ID", f"<{message_id}>"),
              ("Auto-Submitted", "auto-generated"), ("MIME-Version", "1.0"),
              ("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "8bit")]
    if about:
        fields += [("In-Reply-To", f"<{about}>"), ("References", f"<{about}>")]
    text = body.replace("\r\n", "\n").replace("\n", "\r\n")
    return b"".join(headers.field(name, value) for name, value in fields) + b"\r\n" + text.encode("utf-8")
