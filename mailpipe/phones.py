"""Phone numbers as one key, so a caller's number finds the customer however it was written.

``03-1234-5678``, ``+81 3 1234 5678``, ``0312345678`` and full-width ``０３－１２３４－５６７８``
are one number: ``key`` gives its E.164 form (``+81312345678``) with Google's libphonenumber
rules (the ``phonenumbers`` package); a number without a country code is read as Japanese
(``REGION``), the desk's home. The store keeps the key beside what was typed (``phone_key``),
for ``mailpipe customers show PHONE`` and the caller-ID lookup. Pure; imports nothing of ours.
"""

from __future__ import annotations

import phonenumbers

REGION = "JP"


def key(phone: str, region: str = REGION) -> str:
    """The E.164 form of ``phone``; "" when it is not a possible phone number."""
    if not phone or not phone.strip():
        return ""
    try:
        number = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException:
        return ""
    if not phonenumbers.is_possible_number(number):
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def looks_like_phone(text: str) -> bool:
    """Whether a command-line argument is a phone number rather than a mail address."""
    return "@" not in text and bool(key(text))
