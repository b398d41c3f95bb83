"""The lines a sender frames a mail with: the greeting above it and the closing and name under it.

Why: they say nothing about the mail, and read as if they did. "Many thanks, Beryl" under a
how-to question fired THANKS and sank it to low; a greeting alone above a quoted notice made a
bottom-posted answer look top-posted, and the answer under the quote was lost. Both are
recognised narrowly: a closing with anything but a name, a title, a company or a contact under
it, or a greeting with anything else on its line, is the mail itself.
"""

from __future__ import annotations

import re

# A salutation, or 「お世話になっております」 and who is writing. Nothing else on the line.
_GREETING = re.compile(
    r"""(?:
        (?:hi|hello|hey|dear|greetings|good\s+(?:morning|afternoon|evening))\b[^.!?\n]{0,40}[,.!:]?
      | (?:いつも|大変)?お世話になって(?:おり|い)ます[。、]?
      | [^\n。]{1,30}の[^\n。の]{1,12}(?:です|でございます|と申します)[。]?
    )""",
    re.IGNORECASE | re.VERBOSE)
# Only the closing words: "Thanks for restoring the list so fast" is the mail itself.
_CLOSING = re.compile(
    r"""(?:
        (?:(?:many|warm(?:est)?|kind(?:est)?|best)\s+)?(?:thanks|regards|wishes)
      | thank\s+you | thanks\s+(?:again|in\s+advance|a\s+lot|so\s+much) | thank\s+you\s+(?:again|in\s+advance|so\s+much)
      | best | cheers | sincerely | yours(?:\s+(?:truly|sincerely|faithfully))? | all\s+the\s+best | take\s+care
    )[,.!]?""",
    re.IGNORECASE | re.VERBOSE)
_CLOSING_CHARS = 30  # longer than any closing: a long line is not matched at all
_NAME_CHARS = 60
# Words a name, a title or a company may have in lower case: "Head of CRM", "Jan van Dijk".
_LOWER_IN_NAMES = frozenset({"of", "and", "at", "the", "for", "&", "|", "-", "–", "—", "/", "de", "van", "von", "da",
                             "der", "den", "la", "le", "y", "e"})
_CONTACT = re.compile(r"@|https?://|www\.|\+?\d[\d ()./-]{6,}\d|\b(?:inc|ltd|llc|gmbh|corp|co)\b\.?", re.IGNORECASE)
_JAPANESE_NAME = re.compile(r"[\u4e00-\u9fff\u3005]{1,4}(?:[\s\u3000][\u4e00-\u9fff\u3005\u3040-\u30ff]{1,5})?")


def is_greeting(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) <= 60 and _GREETING.fullmatch(stripped) is not None


def is_closing(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) <= _CLOSING_CHARS and _CLOSING.fullmatch(stripped) is not None


def is_name(line: str, only: bool) -> bool:
    """A line of the block under a closing: a name, a title, a company or a contact. A Japanese
    name only as the one line there ("Best regards,\\n田中"): 「全件消失」 looks like one too."""
    stripped = line.strip()
    if not stripped or len(stripped) > _NAME_CHARS or stripped.lower().startswith(("p.s", "ps ", "ps:")):
        return False
    if _CONTACT.search(stripped):
        return True
    if not stripped.isascii():
        return only and _JAPANESE_NAME.fullmatch(stripped) is not None
    words = stripped.replace(",", " ").split()
    return all(word[0].isupper() or word[0].isdigit() or word.lower() in _LOWER_IN_NAMES for word in words) \
        and not stripped.endswith((".", "!", "?", ":"))
