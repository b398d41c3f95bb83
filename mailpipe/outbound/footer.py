"""The footer template: ``{name}``, ``{phone}`` and ``{case}`` filled in for one reply.

Kept apart from ``stamp`` so that ``config.checks`` can refuse a misspelt placeholder without
importing the stamp (which imports ``deliver``, which imports ``config``: a cycle).
"""

from __future__ import annotations

import re

FOOTER_PLACEHOLDERS = ("name", "phone", "case")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(template: str, **values: str) -> str:
    """A footer template with ``{name}``, ``{phone}``, ``{case}`` filled in; unknown names stay
    (``check-config`` refuses them: ``unknown_placeholders``)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), template)


def unknown_placeholders(template: str) -> list[str]:
    return [name for name in _PLACEHOLDER.findall(template) if name not in FOOTER_PLACEHOLDERS]
