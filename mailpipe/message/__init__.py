"""A decoded, read-only view of a raw message: what triage reads, never what gets delivered.

``parse`` takes the bytes as spooled and never raises: broken MIME, wrong or missing charsets,
bad base64 and HTML-only mail all yield text, and what was wrong is listed in ``defects``.
Headers are RFC 2047-decoded with mailpipe's Japanese-aware charsets; the body text prefers
text/plain, falls back to HTML converted to text, and keeps the words the sender wrote now
(``new_text``) apart from quoted history and forwarded messages, and what messages forwarded as
attachments say new (``forwarded``), which triage reads with it. The raw bytes are not touched.
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
from mailpipe.message.quotes import REPLY_PREFIX, reply_subject

_MESSAGE_IDS = re.compile(r"<([^<>\s]+)>")
_CASE_TOKEN = re.compile(r"\[#(\d{1,9})\]")
_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff\uff66-\uff9f]")
_FOLDING = re.compile(r"\s*[\r\n]+\s*")
# The blanks between two encoded words, which RFC 2047 drops: a line break there instead gives
# email.header.decode_header one word a line, as it reads each line's words with list.pop(0) (a
# subject of 64,000 words, 1 MB, took 5.4 s; 0.25 s so; 25 MB, the size limit, would take hours)
# and drops the blanks alike.
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t]*(?==\?)")
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
    forwarded: str = ""  # the new text of the messages attached as message/rfc822 to forward them

    @property
    def read_text(self) -> str:
        """What triage reads of the body: the new text, then what the messages forwarded as
        attachments say new. "FYI, see attached" is all a colleague writes above a monitoring
        alert or a customer's mail; the problem is what they attached, as with a forward written
        inline (:mod:`mailpipe.message.quotes`). Desk commands read ``new_text`` alone: an
        agent's note is what the agent wrote, not the mail attached to name the case."""
        return f"{self.new_text}\n\n{self.forwarded}" if self.forwarded else self.new_text

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
        return _CASE_TOKEN.sub("", REPLY_PREFIX.sub("", self.subject)).strip()


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
        return _join(email.header.decode_header(_BETWEEN_WORDS.sub("\n", text)))
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
    bodies = _bodies(message, defects)
    own = "\n\n".join(bodies.plain) if bodies.plain else "\n\n".join(html.to_text(m) for m in bodies.markup)
    text = "\n\n".join([own, *bodies.attached])[:_MAX_TEXT]
    first = {name: values[0] for name, values in headers.items()}
    subject = first.get("subject", "")
    sender_name, sender = next(iter(mailboxes([message.get("from", "")])), ("", ""))
    recipients = tuple(address for _, address in email.utils.getaddresses(
        headers.get("to", []) + headers.get("cc", [])) if address)
    return ParsedMessage(
        subject=subject,
        sender=sender,
        sender_name=decode_header(sender_name),
        recipients=recipients,
        message_id=next(iter(_MESSAGE_IDS.findall(first.get("message-id", ""))), ""),
        in_reply_to=tuple(_MESSAGE_IDS.findall(first.get("in-reply-to", ""))),
        references=tuple(_MESSAGE_IDS.findall(" ".join(headers.get("references", [])))),
        date=_date(first.get("date", ""), defects),
        headers={name: tuple(values) for name, values in headers.items()},
        text=text,
        new_text=quotes.new_text(own[:_MAX_TEXT], subject, _answering(message, subject)),
        attachments=tuple(bodies.attachments),
        defects=tuple(defects),
        forwarded="\n\n".join(filter(None, (quotes.new_text(text[:_MAX_TEXT], answering=answering)
                                             for text, answering in bodies.forwarded)))[:_MAX_TEXT],
    )


@dataclass
class _Bodies:
    """The text parts of a message, sorted by whose words they are."""

    plain: list[str] = field(default_factory=list)  # the sender's text/plain parts
    markup: list[str] = field(default_factory=list)  # the sender's HTML parts
    attached: list[str] = field(default_factory=list)  # the text of each attached message
    # Of those, the ones forwarded (not returned), each with whether it answered another (_answering).
    forwarded: list[tuple[str, bool]] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)  # file names


def _bodies(message: email.message.Message, defects: list[str]) -> _Bodies:
    """An attached message is one text: its text/plain parts, else its HTML as text, as for the
    sender's own (not both halves of a multipart/alternative). One inside a multipart/report (a
    bounce's copy of our own mail, an abuse report's) is returned, not forwarded."""
    found = _Bodies()
    # Each attached message's plain and HTML parts, whether it is returned, whether it answered another.
    inner: list[tuple[list[str], list[str], bool, bool]] = []
    stack: list[tuple[email.message.Message, int | None, bool]] = [(message, None, False)]
    while stack:
        part, inside, in_report = stack.pop()
        content_type = part.get_content_type()
        if part.is_multipart():
            payload = part.get_payload()
            children = payload if isinstance(payload, list) else []
            if content_type == "message/rfc822":
                inside = len(inner)
                enclosed = next((child for child in children if isinstance(child, email.message.Message)), None)
                inner.append(([], [], in_report, enclosed is None or _answering(enclosed)))
            report = content_type == "multipart/report"
            stack.extend((child, inside, report) for child in reversed(children)
                         if isinstance(child, email.message.Message))
            continue
        filename = _filename(part)
        disposition = str(part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        if filename or disposition == "attachment" or part.get_content_maintype() not in ("text", ""):
            if filename:
                found.attachments.append(filename)
            continue
        text = _text_of(part, defects)
        plain, markup = (found.plain, found.markup) if inside is None else inner[inside][:2]
        (markup if content_type == "text/html" else plain).append(text)
    for plain, markup, returned, answering in inner:
        text = "\n\n".join(plain) if plain else "\n\n".join(map(html.to_text, markup))
        found.attached.append(text)
        if not returned:
            found.forwarded.append((text, answering))
    return found


def _answering(message: email.message.Message, subject: str | None = None) -> bool:
    """Whether a message replies to or forwards another (its subject or In-Reply-To/References
    says so): only then does a bare From:/Date: block in it start quoted history. ``subject`` is
    its Subject decoded, where the caller has decoded it already: decoding a Japanese subject
    again cost as much as the rest of this."""
    if subject is None:
        subject = decode_header(message.get("Subject", ""))
    return reply_subject(subject) or bool(message.get("In-Reply-To") or message.get("References"))


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
