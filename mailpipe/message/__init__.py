"""A decoded, read-only view of a raw message: what triage reads, never what gets delivered.

``parse`` takes the bytes as spooled and never raises: broken MIME, wrong or missing charsets,
bad base64 and HTML-only mail all yield text, and what was wrong is listed in ``defects``.
Headers are RFC 2047-decoded with mailpipe's Japanese-aware charsets; the body text prefers
text/plain, falls back to HTML converted to text, and keeps the words the sender wrote now
(``new_text``) apart from quoted history and forwarded messages. The raw bytes are not touched.
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from datetime import datetime

from mailpipe.addresses import mailboxes
from mailpipe.message import charsets, html, quotes

_MESSAGE_IDS = re.compile(r"<([^<>\s]+)>")
_CASE_TOKEN = re.compile(r"\[#(\d{1,9})\]")
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|fw|fwd|aw|wg|sv|vs|antw|返信|転送|ＲＥ|Ｒｅ)\s*(?:\[\d+\])?\s*[:：]\s*)+",
                           re.IGNORECASE)
_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff\uff66-\uff9f]")
_FOLDING = re.compile(r"\s*[\r\n]+\s*")
_MAX_TEXT = 1_000_000


@dataclass(frozen=True)
class ParsedMessage:
    subject: str
    sender: str
    sender_name: str
    recipients: tuple[str, ...]
    message_id: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    date: datetime | None
    headers: dict[str, tuple[str, ...]]
    text: str
    new_text: str
    attachments: tuple[str, ...] = ()
    defects: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str:
        """The first value of a header, decoded, or ""."""
        values = self.headers.get(name.lower(), ())
        return values[0] if values else ""

    @property
    def language(self) -> str:
        return "ja" if _JAPANESE.search(self.subject) or _JAPANESE.search(self.new_text or self.text) else "en"

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """The Message-IDs this message answers, nearest first (In-Reply-To, then References
        from the newest), without repeats: what threads it into a case."""
        return tuple(dict.fromkeys((*self.in_reply_to, *reversed(self.references))))

    @property
    def case_token(self) -> int | None:
        """The case number in a subject tag such as ``[#123]``."""
        match = _CASE_TOKEN.search(self.subject)
        return int(match[1]) if match else None

    @property
    def is_reply(self) -> bool:
        return bool(self.in_reply_to) or reply_subject(self.subject)

    @property
    def base_subject(self) -> str:
        """The subject without Re:/Fwd:/返信: prefixes and case tags, for threading and display."""
        return _CASE_TOKEN.sub("", _REPLY_PREFIX.sub("", self.subject)).strip()


def reply_subject(subject: str) -> bool:
    """A subject that says it answers something ("Re:", "返信:", "Fwd:")."""
    return bool(_REPLY_PREFIX.match(subject))


def parse(raw: bytes) -> ParsedMessage:
    try:
        return _parse(raw)
    except Exception as exc:  # the contract is "never raises": degrade to the raw text
        text = charsets.guess(raw[:_MAX_TEXT])
        return ParsedMessage("", "", "", (), "", (), (), None, {}, text, quotes.new_text(text),
                             defects=(f"unparseable: {type(exc).__name__}: {exc}",))


def decode_header(value: object) -> str:
    """RFC 2047 words and raw 8-bit bytes alike become text; malformed words stay as written."""
    if isinstance(value, email.header.Header):
        return _join(email.header.decode_header(value))
    text = str(value)
    if text.isascii() and "=?" not in text and "\x1b" not in text:
        return _unfold(text)  # most fields (Received, DKIM-Signature, ids): nothing to decode
    try:
        raw: bytes | None = text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        raw = None  # already decoded, e.g. an RFC 2231 file name
    if raw is not None and any(b > 0x7F for b in raw) and b"=?" not in raw:
        return _unfold(charsets.decode(raw))
    try:
        return _join(email.header.decode_header(text))
    except Exception:
        return _unfold(text if raw is None else charsets.decode(raw))


def _join(chunks: list[tuple[bytes | str, str | None]]) -> str:
    parts = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            try:
                chunk = chunk.encode("ascii", "surrogateescape")
            except UnicodeEncodeError:
                parts.append(chunk)
                continue
        parts.append(charsets.decode(chunk, charset))
    return _unfold("".join(parts))


def _unfold(text: str) -> str:
    return _FOLDING.sub(" ", text).strip()


def _parse(raw: bytes) -> ParsedMessage:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    defects = [type(d).__name__ for d in message.defects]
    headers: dict[str, list[str]] = {}
    for name, value in message.items():
        headers.setdefault(name.lower(), []).append(decode_header(value))
    plain, markup, forwarded, attachments = _bodies(message, defects)
    own = "\n\n".join(plain) if plain else "\n\n".join(html.to_text(m) for m in markup)
    text = "\n\n".join([own, *forwarded])[:_MAX_TEXT]
    first = {name: values[0] for name, values in headers.items()}
    sender_name, sender = next(iter(mailboxes([message.get("from", "")])), ("", ""))
    recipients = tuple(address for _, address in email.utils.getaddresses(
        headers.get("to", []) + headers.get("cc", [])) if address)
    return ParsedMessage(
        subject=first.get("subject", ""),
        sender=sender,
        sender_name=decode_header(sender_name),
        recipients=recipients,
        message_id=next(iter(_MESSAGE_IDS.findall(first.get("message-id", ""))), ""),
        in_reply_to=tuple(_MESSAGE_IDS.findall(first.get("in-reply-to", ""))),
        references=tuple(_MESSAGE_IDS.findall(" ".join(headers.get("references", [])))),
        date=_date(first.get("date", ""), defects),
        headers={name: tuple(values) for name, values in headers.items()},
        text=text,
        new_text=quotes.new_text(own[:_MAX_TEXT], first.get("subject", "")),
        attachments=tuple(attachments),
        defects=tuple(defects),
    )


def _bodies(message: email.message.Message, defects: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(the sender's text/plain parts, their HTML parts, text of forwarded messages, attachment names)."""
    plain: list[str] = []
    markup: list[str] = []
    forwarded: list[str] = []
    attachments: list[str] = []
    stack: list[tuple[email.message.Message, bool]] = [(message, False)]
    while stack:
        part, inside_forward = stack.pop()
        content_type = part.get_content_type()
        if part.is_multipart():
            payload = part.get_payload()
            children = payload if isinstance(payload, list) else []
            nested = inside_forward or content_type == "message/rfc822"
            stack.extend((child, nested) for child in reversed(children) if isinstance(child, email.message.Message))
            continue
        filename = _filename(part)
        disposition = str(part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        if filename or disposition == "attachment" or part.get_content_maintype() not in ("text", ""):
            if filename:
                attachments.append(filename)
            continue
        text = _text_of(part, defects)
        if inside_forward:
            forwarded.append(html.to_text(text) if content_type == "text/html" else text)
        elif content_type == "text/html":
            markup.append(text)
        else:
            plain.append(text)
    return plain, markup, forwarded, attachments


def _text_of(part: email.message.Message, defects: list[str]) -> str:
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:
        defects.append(f"payload: {exc}")
        data = None
    if not isinstance(data, bytes):
        payload = part.get_payload()
        data = payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else b""
    return charsets.decode(data[:_MAX_TEXT], part.get_content_charset()).replace("\r\n", "\n")


def _filename(part: email.message.Message) -> str:
    try:
        name = part.get_filename()
    except Exception:
        return "(unreadable name)"
    return decode_header(name) if name else ""


def _date(value: str, defects: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        defects.append("InvalidDateDefect")
        return None
