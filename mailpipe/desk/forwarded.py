"""What a desk command is about: the case, and the customer message in it.

Agents' clients pass a message on in three ways, and each keeps a different trace: a redirect
(bounce, "resend") keeps the original headers, our ``X-Mailpipe-Case`` among them; a forward as
attachment carries the original as a ``message/rfc822`` part; an inline forward keeps only the
subject, with its ``[#N]`` tag. A reply to the triage card or the message keeps In-Reply-To. They
are tried in that order; an agent's own message is trusted (they logged in), and what the
agent's message itself says (its headers, then its subject) comes before what an attachment says.
Only the agent's own attachments count (``message.attached``), not what those carry inside them:
a customer's ``.eml`` with an ``X-Mailpipe-Case`` of their choosing must not move the command to
another case.
A triage card passed on stands for the customer message it is about: its Message-ID is that
message's queue id (``<QID.triage@host>``, ``triage.render``), which finds the message even when
it had no Message-ID of its own.
"""

from __future__ import annotations

import email.message
import re
from dataclasses import dataclass

from mailpipe.message import ParsedMessage, attached, decode_header
from mailpipe.triage.render import CARD_ID

_CASE_HEADER = re.compile(r"^\s*(\d{1,9})\b")
_TOKEN = re.compile(r"\[#(\d{1,9})\]")
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")


@dataclass(frozen=True)
class About:
    case_id: int | None
    message_id: str  # the customer message passed on, when it can be told
    thread_ids: tuple[str, ...]  # what the command's own message answers
    queue_id: str = ""  # the customer message's queue id, when a triage card was passed on


def about(raw: bytes, parsed: ParsedMessage) -> About:
    outer = attached.read(raw)
    inner = next(attached.attached(outer), None)
    match = _CASE_HEADER.match(str(outer.get("X-Mailpipe-Case", "")))
    if match:
        return _about(int(match[1]), outer, parsed)
    token = _TOKEN.search(parsed.subject or decode_header(outer.get("Subject", "")))
    if token:
        return _about(int(token[1]), inner, parsed)
    if inner is None:
        return About(None, "", parsed.thread_ids)
    match = _CASE_HEADER.match(str(inner.get("X-Mailpipe-Case", "")))
    token = _TOKEN.search(str(inner.get("Subject", "")))
    case_id = int(match[1]) if match else int(token[1]) if token else None
    return _about(case_id, inner, parsed) if case_id is not None else About(None, "", parsed.thread_ids)


def _about(case_id: int, message: email.message.Message | None, parsed: ParsedMessage) -> About:
    """``message``: the one passed on (the agent's redirect itself, or their attachment)."""
    if message is None:
        return About(case_id, "", parsed.thread_ids)
    field = str(message.get("Message-ID", "")).strip()
    card = CARD_ID.fullmatch(field)
    if card:
        return About(case_id, "", parsed.thread_ids, queue_id=card[1])
    found = _MESSAGE_ID.search(field)
    return About(case_id, found[1] if found else "", parsed.thread_ids)

