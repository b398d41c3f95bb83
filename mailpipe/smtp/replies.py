"""SMTP replies (RFC 5321 codes with RFC 3463 enhanced status codes), named in one table.

aiosmtpd's own replies carry no enhanced code ("552 Error: Too much mail data"); ``enhance``
gives them one, so that every reply matches the ENHANCEDSTATUSCODES we advertise.
"""

from __future__ import annotations

import re

SENDER_OK = "250 2.1.0 Ok"
RECIPIENT_OK = "250 2.1.5 Ok"
RELAY_DENIED = "550 5.7.1 Relay access denied: this server accepts mail only for its own domains"
UNKNOWN_RECIPIENT = "550 5.1.1 Recipient address rejected: no such mailbox here"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_CONNECTIONS = "421 4.7.0 {host} Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 {host} Too many connections from your address, try again later"
TIMEOUT = "421 4.4.2 {host} Timeout exceeded, closing connection"
SHUTTING_DOWN = "421 4.3.2 {host} Service shutting down, try again later"
BARE_LINE_END = ("554 5.6.0 Message contains a bare CR or LF; lines must end in CRLF "
                 "(RFC 5321 section 2.3.8)")
NUL_BYTES = "554 5.6.0 Message contains NUL bytes, which RFC 5322 does not allow"
SPOOL_FAILED = "451 4.3.0 Temporary local problem storing the message, try again later"
QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure, try again later"
AUTH_LOCKED = "454 4.7.0 Too many failed authentication attempts, try again later"
SENDER_NOT_OWNED = "553 5.7.1 Sender address rejected: not owned by user {user}"
FROM_NOT_OWNED = "553 5.7.1 From header {address} is not an address you may send as"
FROM_MISSING = "550 5.6.0 Message has no From header (RFC 5322 requires one)"
NULL_SENDER = "553 5.7.1 Agents may not send with a null sender"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
DESK_COMMAND_UNKNOWN = "550 5.1.1 Not a desk command: {usage}"
DESK_COMMAND_ALONE = "550 5.5.1 Desk commands (urgency+LEVEL@...) go in a message of their own"
BAD_HELO = "501 5.5.4 Invalid {command} argument: it must be UTF-8 text without control characters"
BAD_SENDER_TEXT = "501 5.1.7 Bad sender address syntax: invalid UTF-8 or a control character"
BAD_RECIPIENT_TEXT = "501 5.1.3 Bad recipient address syntax: invalid UTF-8 or a control character"

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}\b")
_DEFAULT_ENHANCED = {
    "221": "2.0.0", "250": "2.0.0", "252": "2.0.0",
    "421": "4.3.0", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1", "455": "4.5.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0",
    "555": "5.5.4",
}
# Replies that RFC 2034 leaves without an enhanced code: greeting, EHLO lines, intermediate.
_PLAIN = ("220", "354", "334")


def enhance(reply: str) -> str:
    """Add an RFC 3463 enhanced code to a bare reply; leave replies that have one alone."""
    code = reply[:3]
    if code in _PLAIN or reply[3:4] == "-" or _HAS_ENHANCED.match(reply):
        return reply
    text = reply[4:]
    if text.startswith("Error: "):
        text = text[len("Error: "):]
    enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code} {enhanced} {text[:1].upper()}{text[1:]}" if text else f"{code} {enhanced}"
