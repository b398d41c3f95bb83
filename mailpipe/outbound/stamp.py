"""The stamp: every reply tells the customer who owns their case and which number to call.

``stamp`` inserts the footer into every text/plain and text/html body part — at the end of
plain text, before ``</body>`` in HTML (escaped) — in the part's own charset and transfer
encoding. The original bytes of a part are kept and the footer's bytes spliced in where the
stateful ISO-2022-JP encoding is back in ASCII, so CP50220 characters such as ① survive; a
part moves to UTF-8 only when the footer cannot be written in its charset. A part that already
ends with the footer is left alone, so stamping twice changes nothing. Parts under
multipart/signed or multipart/encrypted, attachments and forwarded messages are never touched
(altering them would break a signature or someone else's mail); they are reported back.

The header block loses mailpipe's internal ``X-Mailpipe-*`` fields and the urgency tags triage
put in the subject (the ``[#N]`` case token stays: the customer's answer threads by it), and
gains a Message-ID and Date when missing. Everything here is pure: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import email
import email.message
import html
import io
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.generator import BytesGenerator
from email.utils import format_datetime, make_msgid

from mailpipe.deliver import headers
from mailpipe.message import charsets, decode_header

_POLICY = policy.compat32.clone(linesep="\r\n")
_OPAQUE = ("multipart/signed", "multipart/encrypted")
_URGENCY_TAG = re.compile(rf"(?:{headers.URGENCY_TAG.pattern})\s*")
_BODY_END = re.compile(rb"</body\s*>", re.IGNORECASE)
_BODY_END_TEXT = re.compile(r"</body\s*>", re.IGNORECASE)
_ASCII_NAMES = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968"})
_JIS_ESCAPE = re.compile(rb"\x1b(?:\([BJI]|\$[@B]|\$\(D)")
_JIS_ASCII = (b"\x1b(B", b"\x1b(J")
HTML_CLASS = "mailpipe-footer"


@dataclass(frozen=True)
class Stamped:
    data: bytes
    stamped: int  # body parts that received the footer now
    message_id: str  # without angle brackets; made up when the message had none
    skipped: tuple[str, ...] = field(default=())  # why parts were left alone (signed, encrypted)


def stamp(raw: bytes, footer: str, hostname: str, now_timestamp: float) -> Stamped:
    """``raw`` with ``footer`` in every body part and its header block cleaned for a customer."""
    head, rest = headers.split(raw)
    head, message_id = _clean_header_block(head, hostname, now_timestamp)
    message = email.message_from_bytes(head + rest, policy=_POLICY)
    skipped: list[str] = []
    stamped = 0
    for part in _body_parts(message, skipped):
        if _stamp_part(part, footer):
            stamped += 1
    if not stamped:
        return Stamped(head + rest, 0, message_id, tuple(skipped))
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
    return Stamped(out.getvalue(), stamped, message_id, tuple(skipped))


def customer_subject(subject: str) -> str:
    """The subject without triage's urgency tags, keeping the case token."""
    return _URGENCY_TAG.sub("", subject).strip()


def _clean_header_block(head: bytes, hostname: str, now_timestamp: float) -> tuple[bytes, str]:
    head = headers.strip_internal(head)
    message = email.message_from_bytes(head + b"\r\n", policy=_POLICY)
    extra = b""
    subject = decode_header(message.get("Subject", ""))
    if _URGENCY_TAG.search(subject):
        head = headers.drop(head, "subject")
        extra += headers.field("Subject", customer_subject(subject))
    message_id = str(message.get("Message-ID", "")).strip()
    if not message_id:
        message_id = make_msgid(domain=hostname)
        extra += headers.field("Message-ID", message_id)
    if not message.get("Date"):
        extra += headers.field("Date", format_datetime(datetime.fromtimestamp(now_timestamp, UTC)))
    return extra + head, message_id.strip("<>")


def _body_parts(message: email.message.Message, skipped: list[str]) -> Iterator[email.message.Message]:
    """text/plain and text/html parts that are the message's own body, not attachments,
    forwarded messages or anything under a signature or encryption."""
    kind = message.get_content_type()
    if kind in _OPAQUE:
        skipped.append(f"{kind} left untouched")
        return
    if message.is_multipart():
        for sub in message.get_payload():
            if isinstance(sub, email.message.Message):
                yield from _body_parts(sub, skipped)
        return
    if kind not in ("text/plain", "text/html"):
        return
    if message.get_content_disposition() == "attachment" or message.get_filename():
        return
    yield message


def _stamp_part(part: email.message.Message, footer: str) -> bool:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return False
    declared = charsets.normalise(part.get_content_charset()) or charsets.guess(payload)
    text = charsets.decode(payload, declared)
    is_html = part.get_content_type() == "text/html"
    addition = _html_footer(footer) if is_html else footer
    if _already_stamped(text, addition, is_html):
        return False
    try:
        footer_bytes = _crlf(addition.encode(_encoder(part.get_content_charset())))
        new = _splice(payload, footer_bytes, is_html, jis=declared == "iso-2022-jp")
        charset = part.get_content_charset() or "us-ascii"
    except (UnicodeEncodeError, LookupError):
        new = _splice(text.encode("utf-8"), _crlf(addition.encode("utf-8")), is_html, jis=False)
        charset = "utf-8"
    _set_payload(part, new, charset)
    return True


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _encoder(declared: str | None) -> str:
    """The codec that writes the footer in a part's declared charset (RFC 2045: none is
    US-ASCII); ISO-2022-JP strictly, so what we add is readable by every client."""
    name = (declared or "us-ascii").lower()
    if name in _ASCII_NAMES:
        return "ascii"
    codec = charsets.normalise(name)
    if not codec:
        raise LookupError(name)
    return "iso2022_jp" if codec == "iso-2022-jp" else codec


def _html_footer(footer: str) -> str:
    lines = "<br>\n".join(html.escape(line) for line in footer.splitlines())
    return f'<div class="{HTML_CLASS}">{lines}</div>\n'


def _already_stamped(text: str, addition: str, is_html: bool) -> bool:
    """Whether the part's own end (plain) or the end of its HTML body already is the footer;
    a footer quoted from an earlier message higher up does not count."""
    if is_html:
        ends = list(_BODY_END_TEXT.finditer(text))
        text = text[: ends[-1].start()] if ends else text
    return " ".join(text.split()).endswith(" ".join(addition.split()))


def _splice(payload: bytes, footer: bytes, is_html: bool, *, jis: bool) -> bytes:
    """The footer's bytes put into the part's bytes: before the last ``</body>`` that sits in
    ASCII (never inside an ISO-2022-JP double-byte run), else at the end after a blank line."""
    if is_html:
        for match in reversed(list(_BODY_END.finditer(payload))):
            if not jis or _ascii_at(payload, match.start()):
                return payload[: match.start()] + footer + payload[match.start():]
    body = payload.rstrip(b"\r\n")
    if jis and not _ascii_at(body, len(body)):
        body += b"\x1b(B"
    return body + b"\r\n\r\n" + footer.rstrip(b"\r\n") + b"\r\n"


def _ascii_at(data: bytes, offset: int) -> bool:
    """Whether ISO-2022-JP ``data`` is in a single-byte (ASCII or JIS-Roman) state at ``offset``."""
    escapes = list(_JIS_ESCAPE.finditer(data, 0, offset))
    return not escapes or escapes[-1][0] in _JIS_ASCII


def _set_payload(part: email.message.Message, data: bytes, charset: str) -> None:
    encoding = (part.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if charset == "utf-8" and encoding == "7bit" and not data.isascii():
        encoding = "base64"
    if encoding == "base64":
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable":
        encoded = quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    else:
        encoded = data
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = encoding
    part.set_param("charset", charset)
    part.set_payload(encoded.decode("ascii", "surrogateescape"))
