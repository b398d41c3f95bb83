"""Bounces of our own mail: which recipient failed, what the remote server said, which message.

RFC 3464 reports (``multipart/report; report-type=delivery-status``) are read field by field:
Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code. Bounces that predate or ignore
the standard (qmail's "failure notice", Exchange's and Japanese ISPs' plain-text notices) are
recognised by a null sender or a mailer-daemon From with a bounce-like subject, and read by
finding the SMTP reply (``550 5.1.1 …``) and the address it concerns in the text; a notice
that quotes no reply (au's Japanese notices) is read as its own words, implying 550. The bounced
message is identified by the Message-ID in its returned headers, which is how the case is found.
Pure: bytes in, a ``Bounce`` (or None when this is no bounce) out.
"""

from __future__ import annotations

import email
import email.message
import re
from dataclasses import dataclass

from mailpipe.message import decode_header

_SUBJECT = re.compile(r"undeliver|delivery (status notification|failure|has failed)|returned mail|failure notice|"
                      r"mail delivery (failed|subsystem)|non.?delivery|配信(不能|できません|エラー)|不達|エラー通知",
                      re.IGNORECASE)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery (system|subsystem)", re.IGNORECASE)
_REPLY = re.compile(r"\b([45]\d\d)[ -]((?:[45]\.\d{1,3}\.\d{1,3}\b)?[^\r\n]*)")
# Tried only where a run of address characters starts: from every position inside a long run
# without "@" the local part ran to its end again (80 KB of letters in a notice took 4 s).
_ADDRESS = re.compile(r"<?(?<![A-Za-z0-9._%+'=-])([A-Za-z0-9._%+'=-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>?")
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
# Where a plain-text notice's own words end and the returned message begins.
_RETURNED_COPY = re.compile(r"^[^\S\n]*(?:-{3,}|Received:|Return-Path:|Message-ID:|Original message|元のメッセージ)",
                            re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Failure:
    recipient: str
    action: str  # failed | delayed
    status: str  # RFC 3463, e.g. 5.1.1
    code: int  # the SMTP reply code, or one implied by the status
    text: str  # the remote server's words, as reported
    remote_mta: str = ""


@dataclass(frozen=True)
class Bounce:
    failures: tuple[Failure, ...]
    original_message_id: str
    standard: bool  # an RFC 3464 report, not a guess from plain text


# For ``_plainly_no_bounce``, on the raw header block lower-cased: the words ``_DAEMON`` looks for,
# with any folding between them (a decoded field has it unfolded to one space), and each From
# field with its continuation lines, as the email parser splits lines (CRLF, CR or LF). Without
# IGNORECASE or a lookbehind in front, the regex engine skips ahead to where a match can start.
_DAEMON_RAW = re.compile(rb"mailer-daemon|postmaster|mail\s+delivery\s+(?:sub)?system")
_FROM_FIELD = re.compile(rb"[\r\n]from:[^\r\n]*(?:(?:\r\n|\r|\n)[ \t][^\r\n]*)*")


def is_bounce(raw: bytes, mail_from: str) -> bool:
    block = raw.split(b"\r\n\r\n", 1)[0]
    if _plainly_no_bounce(block, mail_from):
        return False
    head = email.message_from_bytes(block + b"\r\n\r\n")
    kind = head.get_content_type()
    if kind == "multipart/report" and str(head.get_param("report-type", "")).lower() == "delivery-status":
        return True
    automatic = not mail_from or bool(_DAEMON.search(decode_header(head.get("From", ""))))
    return automatic and bool(_SUBJECT.search(decode_header(head.get("Subject", ""))))


def _plainly_no_bounce(block: bytes, mail_from: str) -> bool:
    """Whether the raw header block alone shows that ``is_bounce`` would say no, without the
    email parser (which every inbound message would otherwise pay for in ``route``): a message
    with an envelope sender is a bounce only if its Content-Type says multipart/report, which
    would be in the block as written, or its From names a mailer daemon. A From with nothing to
    decode (ASCII, no encoded word, no ISO-2022 escape) decodes to itself unfolded, so it names
    one only if the block holds the words; any other From is left to the parser. False means
    "ask the parser", never "a bounce"."""
    lowered = b"\n" + block.lower()  # a line end in front: the first line starts a field too
    if not mail_from or b"multipart/report" in lowered or _DAEMON_RAW.search(lowered):
        return False
    return all(field.isascii() and b"=?" not in field and b"\x1b" not in field
               for field in _FROM_FIELD.findall(lowered))


def parse_bounce(raw: bytes, mail_from: str) -> Bounce | None:
    if not is_bounce(raw, mail_from):
        return None
    message = email.message_from_bytes(raw)
    standard = [f for part in message.walk() if part.get_content_type() == "message/delivery-status"
                for f in _standard_failures(part)]
    failures = standard or _plain_failures(message)
    return Bounce(tuple(failures), _original_message_id(message) or quoted_message_id(raw), bool(standard))


def _standard_failures(part: email.message.Message) -> list[Failure]:
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        return []
    found = []
    for block in blocks[1:]:  # the first block is per-message; then one per recipient
        action = str(block.get("Action", "")).strip().lower()
        if action not in ("failed", "delayed"):
            continue
        recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "").partition(";")[2]
        status = str(block.get("Status", "")).strip()
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).partition(";")[2].split())
        code, text = _reply_in(diagnostic, status, action)
        remote = str(block.get("Remote-MTA", "")).partition(";")[2].strip().rstrip(".")
        found.append(Failure(recipient.strip().strip("<>").lower(), action, status, code, text, remote))
    return found


def _plain_failures(message: email.message.Message) -> list[Failure]:
    text = ""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                text += payload.decode(part.get_content_charset() or "utf-8", "replace") + "\n"
    replies = list(_REPLY.finditer(text))
    if not replies:
        return _wordy_failure(text)
    reply = replies[0]
    # The address the reply names, else the nearest one above it (qmail: "<taro@…>:" on its own line).
    named = _ADDRESS.findall(reply[0]) or _ADDRESS.findall(text[max(0, reply.start() - 600):reply.start()])[-1:]
    addresses = [a for a in named if not _DAEMON.search(a)]
    recipient = addresses[0].lower() if addresses else ""
    code = int(reply[1])
    status = next(iter(re.findall(r"[45]\.\d{1,3}\.\d{1,3}", reply[0])), f"{reply[1][0]}.0.0")
    return [Failure(recipient, "failed" if code >= 500 else "delayed", status, code, reply[2].strip())]


def _wordy_failure(text: str) -> list[Failure]:
    """A notice that quotes no SMTP reply (au's and BIGLOBE's Japanese notices): its own words,
    before the returned copy, stand for the reply, so that the catalog classes them and a text
    it does not know is counted as unknown instead of vanishing."""
    notice = _RETURNED_COPY.split(text, maxsplit=1)[0]
    words = " ".join(notice.split())[:600]
    addresses = [a for a in _ADDRESS.findall(text) if not _DAEMON.search(a)]
    if not words or not addresses:
        return []
    return [Failure(addresses[0].lower(), "failed", "5.0.0", 550, words)]


def _reply_in(diagnostic: str, status: str, action: str) -> tuple[int, str]:
    match = _REPLY.match(diagnostic)
    if match:
        return int(match[1]), " ".join(match[0][4:].split())
    implied = 550 if status.startswith("5") or action == "failed" else 450
    return implied, " ".join(f"{status} {diagnostic}".split())


def _original_message_id(message: email.message.Message) -> str:
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            headers = email.message_from_bytes(payload if isinstance(payload, bytes) else b"")
        elif kind == "message/rfc822":
            inner = part.get_payload()
            headers = inner[0] if isinstance(inner, list) and inner else None
        else:
            continue
        if headers is not None and headers.get("Message-ID"):
            found = _MESSAGE_ID.search(str(headers["Message-ID"]))
            if found:
                return found[1]
    return ""


def quoted_message_id(raw: bytes) -> str:
    """A plain-text bounce quotes the original's headers in its body, if anywhere."""
    body = raw.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
    quoted = re.search(r"^Message-ID:\s*<([^<>\s]+)>", body, re.IGNORECASE | re.MULTILINE)
    return quoted[1] if quoted else ""
