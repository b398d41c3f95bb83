"""Mail address syntax and the canonical form used to compare addresses.

Addresses from config are validated with email-validator; addresses from the SMTP envelope are
only canonicalised (aiosmtpd has already parsed their syntax). ``localhost`` is accepted as a
domain because the embedded defaults run on one machine; email-validator refuses it as a
special-use name, so its local part is checked alone.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

_SINGLE_HOST_DOMAINS = frozenset({"localhost"})


def canonical(address: str) -> str:
    """The form two addresses are compared in: case-insensitive, as Postfix's lookups are."""
    return address.strip().strip("<>").casefold()


def domain_of(address: str) -> str:
    return canonical(address).rpartition("@")[2]


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
