"""Header-block surgery on raw bytes: drop forged internal headers, put ours on top.

The body and every header we do not own stay byte for byte as received, so the sender's
DKIM signature still verifies in the agent's mailbox.
"""

from __future__ import annotations

import re
from email.header import Header

INTERNAL_PREFIX = b"x-mailpipe-"
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(header block including its final CRLF, the rest starting at the blank line)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw, b""
    return raw[: end + 2], raw[end + 2:]


def strip_internal(header_block: bytes) -> bytes:
    """Removes X-Mailpipe-* fields (with their folded lines): a customer must not be able to
    forge our triage verdict, and our verdict must not leak to customers."""
    kept: list[bytes] = []
    dropping = False
    for line in header_block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        match = _FIELD_NAME.match(line)
        dropping = bool(match and match[1].lower().startswith(INTERNAL_PREFIX))
        if not dropping:
            kept.append(line)
    return b"".join(kept)


def field(name: str, value: str) -> bytes:
    """One header field, RFC 2047-encoded when not ASCII, folded, never able to inject a line."""
    clean = " ".join(value.split())
    return f"{name}: {Header(clean, header_name=name).encode(linesep=chr(13) + chr(10))}\r\n".encode("ascii")


def with_headers(raw: bytes, fields: bytes) -> bytes:
    head, rest = split(raw)
    return fields + strip_internal(head) + rest
