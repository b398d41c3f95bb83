"""Header-block surgery on raw bytes: drop forged internal headers, put ours on top.

The body and every header we do not own stay byte for byte as received, so the sender's
DKIM signature still verifies in the agent's mailbox.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.header import Header
from functools import lru_cache
from itertools import groupby

from mailpipe.message import ParsedMessage, parse

INTERNAL_PREFIX = b"x-mailpipe-"
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")
_CONTROLS = re.compile("[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f]")  # tab and line ends are folding's

# The tag triage puts before a delivered message's subject, with the case token: [URGENT][#12].
TAGS = {"critical": "[URGENT]", "high": "[HIGH]"}
URGENCY_TAG = re.compile("|".join(re.escape(tag) for tag in TAGS.values()))
_DELIVERED_TAG = re.compile(rf"^(?:{URGENCY_TAG.pattern})?\[#\d{{1,9}}\] ")


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(header block including its final CRLF, the rest starting at the blank line)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw, b""
    return raw[: end + 2], raw[end + 2:]


def strip_internal(header_block: bytes) -> bytes:
    """Removes X-Mailpipe-* fields (with their folded lines): a customer must not be able to
    forge our triage verdict, and our verdict must not leak to customers. A block without the
    prefix anywhere (nearly every one) is returned as it is, without splitting it into fields."""
    if INTERNAL_PREFIX not in header_block.lower():
        return header_block
    return _drop_fields(header_block, lambda name, line: name.startswith(INTERNAL_PREFIX))


def drop(header_block: bytes, name: str) -> bytes:
    """Removes every field called ``name`` (case-insensitive), folded lines included."""
    wanted = name.lower().encode("ascii")
    return _drop_fields(header_block, lambda field_name, line: field_name == wanted)


def _drop_fields(header_block: bytes, unwanted: Callable[[bytes, bytes], bool]) -> bytes:
    """Removes the fields for which ``unwanted(lower-case name, whole field with its folded
    lines)`` is true."""
    kept: list[bytes] = []
    for whole in _fields(header_block):
        match = _FIELD_NAME.match(whole)
        if not (match and unwanted(match[1].lower(), whole)):
            kept.append(whole)
    return b"".join(kept)


def _fields(header_block: bytes) -> list[bytes]:
    """Each field with its folded continuation lines, as it is in the block."""
    fields: list[bytes] = []
    for line in header_block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


_CFWS = re.compile(rb"(?:[ \t\r\n]+|\((?:[^()\\]|\\.)*\))+", re.DOTALL)


def claimed_authserv_id(field: bytes) -> bytes:
    """The authserv-id an Authentication-Results field claims (RFC 8601 section 2.2), lower-cased:
    the first token after the colon once comments and folding white space are skipped, so that
    ``(c) mx.example.test; dmarc=pass`` is recognised as claiming ``mx.example.test``. Nested
    comments are skipped one level at a time."""
    value = field.partition(b":")[2]
    previous = None
    while previous != value:  # comments inside comments: strip the innermost first
        previous, value = value, _CFWS.sub(b" ", value)
    token = value.strip().split(b";")[0].split()
    return token[0].strip(b'"').lower() if token else b""


def printable(text: str) -> str:
    """``text`` with control characters (NUL, ESC, DEL, C1…) as spaces: what we write into a
    header or a triage card comes from customers' files and mail, and a NUL or an escape there
    breaks mail clients and filters."""
    return _CONTROLS.sub(" ", text)


def field(name: str, value: str) -> bytes:
    """One header field, folded, never able to inject a line or a control character; only
    non-ASCII runs are RFC 2047 encoded, so "yamada (山田 太郎)" still starts with a plain
    "yamada" for mail filters."""
    clean = " ".join(printable(value).split())
    if clean.isascii() and len(name) + len(clean) < 996:  # nothing to encode, within RFC 5322's line limit
        return f"{name}: {clean}\r\n".encode("ascii")
    return _encoded(name, clean)


@lru_cache(maxsize=1024)
def _encoded(name: str, clean: str) -> bytes:
    """RFC 2047 encoding is the slow part of a field (email.header), and some values come back
    message after message: the owners' names (X-Mailpipe-Owner), a returning customer's line."""
    header = Header(header_name=name)
    for ascii_run, words in groupby(clean.split(), key=str.isascii):
        header.append(" ".join(words), "us-ascii" if ascii_run else "utf-8")
    return f"{name}: {header.encode(linesep=chr(13) + chr(10))}\r\n".encode("ascii")


def with_headers(raw: bytes, fields: bytes, subject: str | None = None, authserv_id: str = "") -> bytes:
    """Our fields on top, forged internal ones gone, Authentication-Results claiming to be ours
    gone (RFC 8601 section 5), and the Subject replaced when ``subject`` is given (the subject tag;
    it alters a header the sender may have DKIM-signed, never the body)."""
    head, rest = split(raw)
    head = strip_internal(head)
    # Only a block that names the field can hold one to drop (most hold none: no split into fields).
    if authserv_id and b"authentication-results" in head.lower():
        ours = authserv_id.encode("ascii", "replace").lower()
        head = _drop_fields(head, lambda name, whole: name == b"authentication-results"
                            and claimed_authserv_id(whole) == ours)
    if subject is not None:
        head = drop(head, "subject")
        fields += field("Subject", subject)
    return fields + head + rest


def as_received(raw: bytes, subject: str) -> bytes:
    """A message taken from an agent's mailbox, as the customer sent it, near enough to judge it
    again (``mailpipe score``, ``mailpipe learn``): our fields gone, and ``subject`` (its decoded
    Subject) without the tag triage put on it. A message we never delivered is returned as is."""
    head, rest = split(raw)
    if not re.search(rb"(?im)^x-mailpipe-case:", head):
        return raw
    head = drop(strip_internal(head), "subject")
    return field("Subject", _DELIVERED_TAG.sub("", subject, count=1)) + head + rest


def received(raw: bytes) -> ParsedMessage:
    """The message as its customer sent it, parsed, also when it was saved from an agent's mailbox."""
    return parse(as_received(raw, parse(raw).subject))
