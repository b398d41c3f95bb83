"""What our own outgoing mail looked like, per provider, for the requirements DNS cannot tell.

The send queue reports each accepted message here: whether it went over TLS, whether its
header block is what RFC 5322 and Gmail ask (exactly one From, a Message-ID, a Date, no
duplicated singleton fields), and, for bulk mail (List-Id, Precedence: bulk), whether it offers
one-click unsubscribe (RFC 8058). Facts cover the last ``window`` seconds; with nothing sent to
a provider lately, its facts are unknown rather than good.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from mailpipe.deliver.headers import split

_SINGLETONS = (b"from", b"sender", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
               b"reply-to", b"cc")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


@dataclass(frozen=True)
class Sent:
    at: float
    tls: bool
    well_formed: bool
    bulk: bool
    one_click: bool


def inspect(raw: bytes) -> tuple[bool, bool, bool]:
    """(well formed, bulk, one-click unsubscribe) of a message's header block."""
    head, _ = split(raw)
    names = [m[1].lower() for m in _FIELD.finditer(head)]
    well_formed = (names.count(b"from") == 1 and b"message-id" in names and b"date" in names
                   and all(names.count(name) <= 1 for name in _SINGLETONS))
    lowered = head.lower()
    bulk = b"list-id" in names or b"\nprecedence: bulk" in b"\n" + lowered
    one_click = b"list-unsubscribe" in names and b"list-unsubscribe=one-click" in lowered
    return well_formed, bulk, one_click


class Traffic:
    def __init__(self, window: float = 3600.0, clock: Callable[[], float] = time.time):
        self.window = window
        self._clock = clock
        self._sent: defaultdict[str, deque[Sent]] = defaultdict(lambda: deque(maxlen=10_000))

    def observe(self, provider: str, tls: bool, raw: bytes) -> None:
        well_formed, bulk, one_click = inspect(raw)
        self._sent[provider].append(Sent(self._clock(), tls, well_formed, bulk, one_click))

    def facts(self, provider: str) -> dict[str, bool]:
        """traffic.tls / traffic.format / traffic.unsubscribe, only those something was seen for."""
        since = self._clock() - self.window
        recent = [s for s in self._sent.get(provider, ()) if s.at >= since]
        if not recent:
            return {}
        facts = {"traffic.tls": all(s.tls for s in recent), "traffic.format": all(s.well_formed for s in recent)}
        bulk = [s for s in recent if s.bulk]
        if bulk:
            facts["traffic.unsubscribe"] = all(s.one_click for s in bulk)
        return facts
