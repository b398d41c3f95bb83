"""What a desk command is about: the case, and the customer message in it.

Agents' clients pass a message on in three ways, and each keeps a different trace: a redirect
(bounce, "resend") keeps the original headers, our ``X-Mailpipe-Case`` among them; a forward as
attachment carries the original as a ``message/rfc822`` part; an inline forward keeps only the
subject, with its ``[#N]`` tag. A reply to the triage card or the message keeps In-Reply-To. They
are tried in that order; an agent's own message is trusted (they logged in).
"""

from __future__ import annotations

import email
import email.message
import re
from dataclasses import dataclass

from mailpipe.message import ParsedMessage

_CASE_HEADER = re.compile(r"^\s*(\d{1,9})\b")
_TOKEN = re.compile(r"\[#(\d{1,9})\]")
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")


@dataclass(frozen=True)
class About:
    case_id: int | None
    message_id: str  # the customer message passed on, when it can be told
    thread_ids: tuple[str, ...]  # what the command's own message answers


def about(raw: bytes, parsed: ParsedMessage) -> About:
    outer = email.message_from_bytes(raw)
    inner = next((part.get_payload(0) for part in outer.walk()
                  if part.get_content_type() == "message/rfc822" and part.is_multipart()), None)
    for message in (outer, inner):
        if not isinstance(message, email.message.Message):
            continue
        match = _CASE_HEADER.match(str(message.get("X-Mailpipe-Case", "")))
        if match:
            return About(int(match[1]), _message_id(message), parsed.thread_ids)
    subjects = [parsed.subject] + ([str(inner.get("Subject", ""))] if isinstance(inner, email.message.Message) else [])
    for subject in subjects:
        token = _TOKEN.search(subject)
        if token:
            return About(int(token[1]), _message_id(inner) if isinstance(inner, email.message.Message) else "",
                         parsed.thread_ids)
    return About(None, "", parsed.thread_ids)


def _message_id(message: email.message.Message) -> str:
    found = _MESSAGE_ID.search(str(message.get("Message-ID", "")))
    return found[1] if found else ""
