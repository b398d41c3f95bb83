"""The messages a mail carries as attachments (``message/rfc822`` parts) of its own.

Only the mail's own: not what those carry inside them. An inline forward keeps the customer's
attachments, so a customer's ``.eml`` sits beside the agent's text, but what that ``.eml``
carries is two levels down and belongs to nobody here. A loop, not ``Message.walk``: a mail
nests as deep as its sender likes.
"""

from __future__ import annotations

import email
import email.message
import email.parser
from collections.abc import Iterator


def read(raw: bytes) -> email.message.Message:
    """The mail's structure, or its header fields alone when it nests deeper than the ``email``
    parser recurses (a thousand ``message/rfc822`` parts in a few kilobytes)."""
    try:
        return email.message_from_bytes(raw)
    except RecursionError:
        return email.parser.BytesHeaderParser().parsebytes(raw)


def attached(message: email.message.Message) -> Iterator[email.message.Message]:
    """The messages attached to ``message`` itself (in any of its multiparts), in order."""
    stack = [message]
    while stack:
        part = stack.pop()
        if part.get_content_type() == "message/rfc822":
            if part is not message and part.is_multipart():
                inner = part.get_payload(0)
                if isinstance(inner, email.message.Message):
                    yield inner
            continue
        if part.is_multipart():
            payload = part.get_payload()
            stack.extend(reversed([p for p in payload if isinstance(p, email.message.Message)]))
