"""Mail address syntax and the canonical form used to compare addresses.

Addresses from config are validated with email-validator; addresses from the SMTP envelope are
only canonicalised (aiosmtpd has already parsed their syntax). ``localhost`` is accepted as a
domain because the embedded defaults run on one machine; email-validator refuses it as a
special-use name, so its local part is checked alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.header import Header, decode_header
from email.utils import getaddresses

from email_validator import EmailNotValidError, validate_email

_SINGLE_HOST_DOMAINS = frozenset({"localhost"})


def canonical(address: str) -> str:
    """The form two addresses are compared in: case-insensitive, as Postfix's lookups are."""
    return address.strip().strip("<>").casefold()


def domain_of(address: str) -> str:
    return canonical(address).rpartition("@")[2]


def mailboxes(values: Iterable[str]) -> list[tuple[str, str]]:
    """(display name as written, address) of each mailbox in address fields (From, Sender,
    Reply-To), parsed before any RFC 2047 word is decoded: such words may stand only in display
    names (RFC 2047 section 5), so ``=?us-ascii?q?a=40b_=28?= <c@d>`` is c@d's address, never
    a@b's. The send-as check and DKIM signing both read From with this one parser. Raw 8-bit
    (SMTPUTF8) addresses are read as UTF-8; a word outside ``<>`` that is no address stays one,
    so whoever checks it refuses it."""
    unfolded = [" ".join(_as_written(value).split()) for value in values]
    return [(name, address.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            for name, address in getaddresses(unfolded)]


def _as_written(value: object) -> str:
    """The field as it came, 8-bit bytes as surrogates: the compat32 policy hands fields with
    8-bit bytes over as ``Header`` objects whose ``str`` has lost them."""
    if not isinstance(value, Header):
        return str(value)
    return "".join(chunk.decode("utf-8", "surrogateescape") if isinstance(chunk, bytes) else chunk
                   for chunk, _ in decode_header(value))


def syntax_problem(address: str) -> str | None:
    """Why ``address`` cannot be a mailbox, or None when it can."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "missing @domain"
    if domain.casefold() in _SINGLE_HOST_DOMAINS:
        address = f"{local}@example.com"
    try:
        validate_email(address, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        return str(exc)
    return None
