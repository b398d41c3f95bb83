"""The stamp: every reply tells the customer who owns their case and which number to call.

``stamp`` inserts the footer into every text/plain and text/html body part — at the end of
plain text, before ``</body>`` in HTML (escaped) — in the part's own charset and transfer
encoding. The original bytes of a part are kept and the footer's bytes spliced in where the
stateful ISO-2022-JP encoding is back in ASCII, so CP50220 characters such as ① survive; a
part moves to UTF-8 only when the footer cannot be written in its charset. A part that already
ends with the footer is left alone, so stamping twice changes nothing. Parts under
multipart/signed or multipart/encrypted, attachments and forwarded messages are never stamped
(altering them would break a signature or someone else's mail); signed and encrypted parts are
reported back. A forwarded message that is a copy triage delivered to an agent loses our fields
and tags from its header block, and so does each such copy attached inside it, up to 20 deep
and whether it travels as it is, base64 or quoted-printable (its bodies' text stays as it was);
any other is left byte for byte.

The header block loses mailpipe's internal ``X-Mailpipe-*`` fields and the urgency tags triage
put in the subject (the ``[#N]`` case token stays: the customer's answer threads by it), and
gains a Message-ID and Date when missing. Everything here is pure: bytes in, bytes out.

Every byte the stamp does not change stays as it was: the message is split along its MIME
boundaries (RFC 2046) rather than parsed and generated again, only the header blocks are
read (their fields filed by the ``email`` package), and only a stamped part's body — and its
Content-Type and Content-Transfer-Encoding fields, when the charset or the encoding had to
change — is written anew. Whether a part already ends with the footer is decided from the
part's end: ISO-2022-JP is decoded back only from the escape sequences the comparison needs.
A body part's header block is read once per distinct block (a client writes its parts' fields
alike in every reply), and a body is run through ``get_payload`` only when it is quoted-printable,
base64 or uuencoded.
"""

from __future__ import annotations

import base64
import email.message
import html
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.utils import format_datetime, make_msgid
from functools import lru_cache
from itertools import chain

from mailpipe.deliver import headers
from mailpipe.message import charsets, decode_header

_POLICY = policy.compat32.clone(linesep="\r\n")
_OPAQUE = ("multipart/signed", "multipart/encrypted")
_URGENCY_TAG = re.compile(rf"(?:{headers.URGENCY_TAG.pattern})\s*")
# Header lines as email.feedparser's headerRE takes them, as many as follow each other: one match
# for the block instead of one per line.
_HEADER_BLOCK = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\n]*(?:\n|\Z))*")
# The fields the stamp reads of a message's own header block (_customer_header, _read).
_READ_FIELDS = frozenset({"subject", "message-id", "date", "content-type", "content-disposition",
                          "content-transfer-encoding"})
# A multipart Content-Type with one parameter, its boundary written in RFC 2046's characters (quoted,
# or a token without the ones that need quoting): what nearly every client writes, and whose type
# and boundary read as get_content_type and get_boundary read them; any other goes through those.
_SIMPLE_MULTIPART = re.compile(r"[ \t\r\n]*(multipart/[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+)[ \t\r\n]*;[ \t\r\n]*"
                               r"boundary=(?:\"([0-9A-Za-z'()+_,\-./:=? ]+)\"|([0-9A-Za-z'+_\-.]+))[ \t\r\n]*",
                               re.IGNORECASE)
_BLANK_LINE = re.compile(rb"\r?\n")
_BODY_END = re.compile(rb"</body\s*>", re.IGNORECASE)
_ASCII_NAMES = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968"})
# The escape sequences charsets.decode_iso2022jp switches on; _JIS_ASCII are those back to ASCII.
_JIS_ESCAPE = re.compile(rb"\x1b(?:\([BJH]|\(I|\$[@B]|\$\(D)")
_JIS_ASCII = (b"\x1b(B", b"\x1b(J", b"\x1b(H")
_SHIFT_OUT = b"\x0e"
# The transfer encodings get_payload(decode=True) undoes; any other part's payload is its bytes.
_DECODED = frozenset({"quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue"})
_CACHED_HEADER = 1024  # longer part header blocks are read each time, not kept
_TRANSFER, _SUBJECT = frozenset({"content-transfer-encoding"}), frozenset({"subject"})
_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})  # the transfer encodings a message/rfc822 part may have
_ATTACHED_MESSAGES = ("message/rfc822", "message/global")
_MAX_ATTACHED_DEPTH = 20
# What makes an attached message worth reading for our fields: one of them, or an encoded part or
# attached message that could hide one.
_OURS = re.compile(rb"x-mailpipe-", re.IGNORECASE)
_ENCODED = re.compile(rb"content-transfer-encoding:[ \t\r\n]*(?:base64|quoted-printable)", re.IGNORECASE)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
HTML_CLASS = "mailpipe-footer"


@dataclass(frozen=True)
class Stamped:
    data: bytes
    stamped: int  # body parts that received the footer now
    message_id: str  # without angle brackets; made up when the message had none
    skipped: tuple[str, ...] = field(default=())  # why parts were left alone (signed, encrypted)


def stamp(raw: bytes, footer: str, hostname: str, now_timestamp: float) -> Stamped:
    """``raw`` with ``footer`` in every body part and its header block cleaned for a customer."""
    head, blank, body = _split(raw)
    head = headers.strip_internal(head)
    fields = _fields(head, _READ_FIELDS)
    head, message_id = _customer_header(head, fields, hostname, now_timestamp)
    skipped: list[str] = []
    try:
        head, body, stamped = _stamp_entity(head, body, _read(fields), footer, skipped)
    except RecursionError:  # a stage failure, so quarantined with this reason: never sent unstamped or uncleaned
        raise ValueError("its body parts or attached messages nest too deep to stamp it and take our fields"
                         " out of them") from None
    return Stamped(head + (blank or (b"\r\n" if stamped else b"")) + body, stamped, message_id, tuple(skipped))


def customer_subject(subject: str) -> str:
    """The subject without triage's urgency tags, keeping the case token."""
    return _URGENCY_TAG.sub("", subject).strip()


def _split(entity: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block with its last line end, the empty line, the body) of a message or body part,
    as the ``email`` package reads them: the header ends at the empty line, or without one at
    the first line that is not a field (which then starts the body)."""
    end = _HEADER_BLOCK.match(entity).end()
    blank = _BLANK_LINE.match(entity, end)
    return entity[:end], blank[0] if blank else b"", entity[blank.end() if blank else end:]


def _fields(head: bytes, names: frozenset[str] | None = None) -> email.message.Message:
    """The fields of a header block filed as the ``email`` feedparser files them (each field with
    its folded lines, through the policy; a "From " envelope line and a line without a name left
    out), without running the feedparser's line machinery three times per reply; only those
    called one of ``names`` (lower case) when given, for a reader that asks for no others."""
    fields = email.message.Message(_POLICY)
    lines: list[str] = []
    for line in (raw.decode("ascii", "surrogateescape") for raw in head.splitlines(keepends=True)):
        if line[0] in " \t":
            if lines:
                lines.append(line)
            continue
        if lines:
            fields.set_raw(*_POLICY.header_source_parse(lines))
        colon = line.find(":")
        wanted = colon > 0 and not line.startswith("From ") and (names is None or line[:colon].lower() in names)
        lines = [line] if wanted else []
    if lines:
        fields.set_raw(*_POLICY.header_source_parse(lines))
    return fields


def _customer_header(head: bytes, fields: email.message.Message, hostname: str,
                     now_timestamp: float) -> tuple[bytes, str]:
    extra = b""
    message_id = str(fields.get("Message-ID", "")).strip()
    if not message_id:
        message_id = make_msgid(domain=hostname)
        extra += headers.field("Message-ID", message_id)
    if not fields.get("Date"):
        extra += headers.field("Date", format_datetime(datetime.fromtimestamp(now_timestamp, UTC)))
    return _untagged(extra + head, fields.get("Subject", "")), message_id.strip("<>")


def _untagged(head: bytes, subject_field: object) -> bytes:
    """``head`` with its Subject (``subject_field`` as filed) without triage's urgency tags, first
    in the block; the same object when it has none."""
    subject = decode_header(subject_field)
    if not _URGENCY_TAG.search(subject):
        return head
    return headers.field("Subject", customer_subject(subject)) + headers.drop(head, "subject")


def _stamp_entity(head: bytes, body: bytes, entity: _Entity, footer: str | None,
                  skipped: list[str], depth: int = 0) -> tuple[bytes, bytes, int]:
    """(header block, body, parts stamped) of a message or body part with the footer in each of
    its own text parts: not in attachments, forwarded messages or anything signed or encrypted.
    Without a footer, only the forwarded messages within are cleaned (``_attached_for_customer``);
    ``depth`` is how many attached messages this one is inside."""
    if entity.kind in _OPAQUE:
        skipped.append(f"{entity.kind} left untouched")
        return head, body, 0
    if entity.kind in _ATTACHED_MESSAGES:
        return head, _attached_for_customer(head, body, depth + 1), 0
    if entity.kind.startswith("multipart/"):
        if entity.boundary is None:
            return head, body, 0
        body, stamped = _stamp_multipart(body, entity.boundary.encode("ascii", "surrogateescape"),
                                         "message/rfc822" if entity.kind == "multipart/digest" else "text/plain",
                                         footer, skipped, depth)
        return head, body, stamped
    if not entity.text or footer is None:
        return head, body, 0
    return _stamp_part(head, body, entity, footer)


@dataclass(frozen=True)
class _Entity:
    """What the stamp reads of a header block, each through the ``email`` package as before."""

    kind: str  # get_content_type()
    boundary: str | None = None  # get_boundary() of a multipart
    text: bool = False  # text/plain or text/html, neither an attachment nor a named file; then:
    charset: str | None = None  # get_content_charset()
    transfer: str = ""  # its Content-Transfer-Encoding as get_payload reads it
    declared_encoding: str = ""  # ... and as the stamp writes it back


def _read(fields: email.message.Message) -> _Entity:
    content_type = fields.get("content-type")
    simple = _SIMPLE_MULTIPART.fullmatch(content_type) if isinstance(content_type, str) else None
    if simple:
        return _Entity(simple[1].lower(), (simple[2] or simple[3]).rstrip())
    kind = fields.get_content_type()
    if kind.startswith("multipart/"):
        return _Entity(kind, fields.get_boundary())
    if kind not in ("text/plain", "text/html") or fields.get_content_disposition() == "attachment" \
            or _named(fields):
        return _Entity(kind)
    return _Entity(kind, None, True, fields.get_content_charset(),
                   str(fields.get("content-transfer-encoding", "")).lower(),
                   (fields.get("Content-Transfer-Encoding") or "7bit").strip().lower())


def _read_part(head: bytes, default_type: str) -> _Entity:
    fields = _fields(head)
    fields.set_default_type(default_type)
    return _read(fields)


# A body part's header block, read once: the same few blocks recur in reply after reply (a mail
# client writes its text and HTML parts' fields alike), and filing a block's fields and parsing
# their parameters was most of the stamp's header work.
_read_recurring_part = lru_cache(maxsize=256)(_read_part)


def _named(fields: email.message.Message) -> bool:
    """Whether the part has a file name (``get_filename``), asked only of a part whose
    Content-Disposition or Content-Type has a parameter called (file)name at all: parsing both
    fields' parameters for it cost more than the rest of the part's header handling."""
    for name in ("Content-Disposition", "Content-Type"):
        if "name" in str(fields.get(name, "")).lower():
            return bool(fields.get_filename())
    return False


def _stamp_multipart(body: bytes, boundary: bytes, default_type: str, footer: str | None,
                     skipped: list[str], depth: int) -> tuple[bytes, int]:
    pieces: list[bytes] = []
    done = stamped = 0
    for start, end in _part_spans(body, boundary):
        head, blank, part_body = _split(body[start:end])
        read = _read_recurring_part if len(head) <= _CACHED_HEADER else _read_part
        original = part_body
        head, part_body, count = _stamp_entity(head, part_body, read(head, default_type), footer, skipped, depth)
        if count or part_body is not original:
            pieces += [body[done:start], head, blank or b"\r\n", part_body]
            done, stamped = end, stamped + count
    return b"".join([*pieces, body[done:]]), stamped


def _attached_for_customer(head: bytes, message: bytes, depth: int) -> bytes:
    """A message attached to a reply (the customer's own, forwarded as an attachment from the
    agent's mailbox) without what triage wrote on it: our X-Mailpipe-* fields (the customer's
    plan, VIP, owner and phone, the verdict) and then the urgency tags of its subject, in its own
    header block and in those of the messages attached within it (an agent forwarding a
    colleague's forward). Sent base64 or quoted-printable (as some clients do, although RFC 2046
    forbids it), it is read decoded, as leniently as mail clients read it, and when cleaned
    written in the same encoding again. The same object when it carries none of our fields
    anywhere (a vendor's signed notice keeps its signature): anyone else's message leaves byte
    for byte. Deeper than ``_MAX_ATTACHED_DEPTH``, a ``ValueError``: such a reply is no agent's
    answer, and reading each level again made it quadratic."""
    if depth > _MAX_ATTACHED_DEPTH:
        raise ValueError(f"it attaches messages nested more than {_MAX_ATTACHED_DEPTH} deep")
    encoding = str(_fields(head, _TRANSFER).get("content-transfer-encoding", "")).strip().lower()
    if encoding in _IDENTITY:
        return _message_for_customer(message, depth)
    decoded = _decoded_leniently(message, encoding)
    if decoded is None:
        return message
    cleaned = _message_for_customer(decoded, depth)
    return message if cleaned is decoded else _transfer_encoded(cleaned, encoding)


def _message_for_customer(message: bytes, depth: int) -> bytes:
    """An attached message with our fields and tags gone from its header block, and from those of
    the messages attached within its body; the same object when there were none. A message
    naming none of our fields and holding nothing encoded that could hide them is not read."""
    if not _OURS.search(message) and not _ENCODED.search(message):
        return message
    inner, blank, body = _split(message)
    cleaned = headers.strip_internal(inner)
    if cleaned is not inner:
        cleaned = _untagged(cleaned, _fields(cleaned, _SUBJECT).get("Subject", ""))
    _, within, _ = _stamp_entity(inner, body, _read_part(inner, "text/plain"), None, [], depth)
    if cleaned is inner and within is body:
        return message
    return cleaned + blank + within


def _decoded_leniently(data: bytes, encoding: str) -> bytes | None:
    """``data`` decoded from base64 or quoted-printable as mail clients read it (base64 without
    its padding, or with line breaks and stray characters in it); None for another encoding."""
    if encoding == "quoted-printable":
        return quopri.decodestring(data)
    if encoding != "base64":
        return None
    letters = _NOT_BASE64.sub(b"", data)
    if len(letters) % 4 == 1:  # a last letter alone holds no whole byte
        letters = letters[:-1]
    return base64.b64decode(letters + b"=" * (-len(letters) % 4))


def _part_spans(body: bytes, boundary: bytes) -> list[tuple[int, int]]:
    """Where each body part starts and ends: between delimiter lines ("--" boundary, "--" more on
    the closing one, then nothing but spaces and tabs; RFC 2046 5.1.1), each part without the
    line end before the next delimiter, which belongs to the delimiter. Without a closing
    delimiter the last part runs to the end, as the ``email`` package reads it."""
    marker = b"--" + boundary
    spans: list[tuple[int, int]] = []
    start = None
    at = body.find(marker)
    while at >= 0:
        line_end = body.find(b"\n", at)
        line_end = len(body) if line_end < 0 else line_end + 1
        rest = body[at + len(marker):line_end].rstrip(b"\r\n")
        closing = rest.startswith(b"--")
        if (at == 0 or body[at - 1] == 0x0A) and not (rest[2:] if closing else rest).strip(b" \t"):
            if start is not None:
                before = 2 if body[at - 2:at] == b"\r\n" else 1
                spans.append((start, max(start, at - before)))
            if closing:
                return spans
            start = line_end
        at = body.find(marker, at + len(marker))
    if start is not None:
        spans.append((start, len(body)))
    return spans


def _stamp_part(head: bytes, body: bytes, entity: _Entity, footer: str) -> tuple[bytes, bytes, int]:
    payload = _decoded(head, body) if entity.transfer in _DECODED else body
    if not isinstance(payload, bytes):
        return head, body, 0
    is_html = entity.kind == "text/html"
    label = entity.charset
    declared = charsets.normalise(label)  # "": charsets.decode guesses
    jis = declared == "iso-2022-jp"
    addition = _html_footer(footer) if is_html else footer
    footer_bytes, reads = _written(addition, label, declared) or (None, addition)
    place = _footer_place(payload, is_html, jis=jis)
    if _ends_with(payload, place, declared, reads):
        return head, body, 0
    if footer_bytes is not None:
        new, charset = _splice(payload, place, footer_bytes, jis=jis), label or "us-ascii"
    else:
        data = charsets.decode(payload, declared).encode("utf-8")
        new = _splice(data, _footer_place(data, is_html, jis=False), _crlf(addition.encode("utf-8")), jis=False)
        charset = "utf-8"
    declared_encoding = entity.declared_encoding
    encoding = "base64" if charset == "utf-8" and declared_encoding == "7bit" and not new.isascii() \
        else declared_encoding
    if charset != (label or "us-ascii") or encoding != declared_encoding:
        head = _retyped(head, charset, encoding)
    return head, _transfer_encoded(new, encoding), 1


def _decoded(head: bytes, body: bytes) -> bytes | None:
    """The part's body with its transfer encoding undone, as ``get_payload(decode=True)`` does;
    asked only of a quoted-printable, base64 or uuencoded part: of any other the body is its
    bytes as they are."""
    fields = _fields(head)
    fields.set_payload(body.decode("ascii", "surrogateescape"))
    payload = fields.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else None


@lru_cache(maxsize=256)
def _written(addition: str, label: str | None, declared: str) -> tuple[bytes, str] | None:
    """The footer's bytes in the part's charset and how they read back (a wave dash written in
    ISO-2022-JP reads back as CP50220's full-width tilde), or None when that charset cannot hold it."""
    try:
        data = _crlf(addition.encode(_encoder(label)))
    except (UnicodeEncodeError, LookupError):
        return None
    return data, charsets.decode(data, declared)


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


@lru_cache(maxsize=64)
def _html_footer(footer: str) -> str:
    lines = "<br>\n".join(html.escape(line) for line in footer.splitlines())
    return f'<div class="{HTML_CLASS}">{lines}</div>\n'


def _footer_place(payload: bytes, is_html: bool, *, jis: bool) -> int:
    """Where the footer goes: before the last ``</body>`` of HTML that sits in ASCII (never
    inside an ISO-2022-JP double-byte run), else at the end."""
    if is_html:
        for match in reversed(list(_BODY_END.finditer(payload))):
            if not jis or _ascii_at(payload, match.start()):
                return match.start()
    return len(payload)


def _ends_with(payload: bytes, place: int, declared: str, footer: str) -> bool:
    """Whether the text before ``place`` already ends with ``footer``, white space aside (a
    footer quoted higher up does not count). The text is decoded from its end backwards, from
    one ISO-2022-JP escape sequence to the one before, only until the comparison is decided:
    decoding the whole part would cost about as much as the rest of the stamp. Each escape sets
    the decoder's state, so the end decodes as it does in the whole part; 8-bit bytes or
    shift-out (SO/SI) keep state across escapes, and then the whole is decoded."""
    wanted = " ".join(footer.split())
    windows = declared == "iso-2022-jp" and payload.isascii() and _SHIFT_OUT not in payload
    for start in chain(_escapes_before(payload, place) if windows else (), (0,)):
        tail = " ".join(charsets.decode(payload[start:place], declared).split())
        if start == 0 or len(tail) >= len(wanted) or not wanted.endswith(tail):
            return tail.endswith(wanted)
    raise AssertionError("the loop returns at start 0")


def _escapes_before(data: bytes, offset: int) -> Iterator[int]:
    """Where the ISO-2022-JP escape sequences before ``offset`` start, the last first."""
    at = data.rfind(b"\x1b", 0, offset)
    while at >= 0:
        if _JIS_ESCAPE.match(data, at):
            yield at
        at = data.rfind(b"\x1b", 0, at)


def _splice(payload: bytes, place: int, footer: bytes, *, jis: bool) -> bytes:
    """The footer's bytes put into the part's bytes at ``place``: before ``</body>``, or at the
    end after a blank line, back in ASCII first when ISO-2022-JP ends in a double-byte run."""
    if place < len(payload):
        return payload[:place] + footer + payload[place:]
    body = payload.rstrip(b"\r\n")
    if jis and not _ascii_at(body, len(body)):
        body += b"\x1b(B"
    return body + b"\r\n\r\n" + footer.rstrip(b"\r\n") + b"\r\n"


def _ascii_at(data: bytes, offset: int) -> bool:
    """Whether ISO-2022-JP ``data`` is in a single-byte (ASCII or JIS-Roman) state at ``offset``."""
    last = next(_escapes_before(data, offset), None)
    return last is None or data.startswith(_JIS_ASCII, last)


def _retyped(head: bytes, charset: str, encoding: str) -> bytes:
    """The part's header block with its charset and transfer encoding as now written."""
    fields = _fields(head)
    fields.set_param("charset", charset)
    head = headers.drop(headers.drop(head, "content-type"), "content-transfer-encoding")
    return head + (f"Content-Type: {fields['Content-Type']}\r\n"
                   f"Content-Transfer-Encoding: {encoding}\r\n").encode("ascii", "surrogateescape")


def _transfer_encoded(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n")
    if encoding == "quoted-printable":
        return quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    return data
