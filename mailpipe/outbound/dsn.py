"""Delivery status notifications (RFC 3464) for the agent whose reply could not be delivered.

A ``multipart/report; report-type=delivery-status`` with three parts: a short explanation in
Japanese and English (which recipient, what the server said, what to do), the machine-readable
``message/delivery-status`` (Reporting-MTA, Final-Recipient, Action, Status, Remote-MTA,
Diagnostic-Code per recipient) and the headers of the undelivered message
(``text/rfc822-headers``, so the agent's client can thread it). Pure: the caller delivers it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

from mailpipe.deliver import headers, notice
from mailpipe.outbound.send import Reply

_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def status_of(reply: Reply) -> str:
    """The RFC 3463 status of a reply: its own enhanced code, else one implied by the basic code."""
    found = _ENHANCED.search(reply.text)
    if found:
        return found[1]
    return "5.0.0" if reply.permanent else "4.0.0"


def report(*, reporting_mta: str, agent_address: str, original: bytes, failed: Mapping[str, Reply],
           queue_id: str, arrival: float, now: float, expired: bool, case_id: int | None = None,
           thread: Sequence[str] = ()) -> bytes:
    """``case_id`` puts the case token in the subject; ``thread`` (the case's customer message,
    then the undelivered reply) threads the report under the case in the agent's client."""
    boundary = f"mailpipe-dsn-{secrets.token_hex(8)}"
    original_headers, _ = headers.split(original)
    lines_ja = [f"次の宛先にメールを配信できませんでした（キューID {queue_id}）。", ""]
    lines_en = [f"Your message could not be delivered to the recipients below (queue id {queue_id}).", ""]
    for recipient, reply in failed.items():
        lines_ja.append(f"  {recipient}: {reply}")
        lines_en.append(f"  {recipient}: {reply}")
    if expired:
        lines_ja += ["", "一時的なエラーが配送期限まで続いたため、配信を中止しました。"]
        lines_en += ["", "Temporary failures lasted until the message expired from the queue."]
    lines_ja += ["", "宛先が正しいかお確かめのうえ、お客様には電話など別の手段でご連絡ください。"]
    lines_en += ["", "Please check the address, and reach the customer by phone or another way."]
    if case_id:
        lines_ja.append(f"ケース #{case_id} は回答済みではありません（未回答に戻しました）。")
        lines_en.append(f"Case #{case_id} does not count as answered: it is open again.")
    explanation = "\r\n".join([*lines_ja, "", *lines_en]) + "\r\n"
    per_message = [f"Reporting-MTA: dns; {reporting_mta}", f"X-Mailpipe-Queue-ID: {queue_id}",
                   f"Arrival-Date: {format_datetime(datetime.fromtimestamp(arrival, UTC))}"]
    status_block = "\r\n".join(per_message) + "\r\n"
    for recipient, reply in failed.items():
        fields = [f"Final-Recipient: rfc822; {recipient}", "Action: failed", f"Status: {status_of(reply)}"]
        if reply.host:
            fields.append(f"Remote-MTA: dns; {reply.host}")
        fields.append(f"Diagnostic-Code: smtp; {reply.code} {' '.join(reply.text.split())}")
        fields.append(f"Last-Attempt-Date: {format_datetime(datetime.fromtimestamp(now, UTC))}")
        status_block += "\r\n" + "\r\n".join(fields) + "\r\n"
    top = [
        ("From", f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"),
        ("To", agent_address),
        ("Subject", f"{f'[#{case_id}] ' if case_id else ''}配信できませんでした / Undelivered Mail Returned to Sender"),
        ("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
        ("Message-ID", f"<{queue_id}.dsn.{int(now)}@{reporting_mta}>"),
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{boundary}"'),
        *notice.thread_fields(thread),
    ]
    head = b"".join(headers.field(name, value) for name, value in top)
    return (head + b"\r\n" + b"This is a MIME-encapsulated delivery status notification.\r\n\r\n"
            + f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            .encode() + explanation.encode("utf-8")
            + f"\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n".encode() + status_block.encode()
            + f"\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode() + original_headers
            + f"\r\n--{boundary}--\r\n".encode())
