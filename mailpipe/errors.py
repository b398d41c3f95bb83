"""What can go wrong, named once: the loaders' problems and the outcomes of a queued message.

``Problems`` is the base of every error that carries a list of ``.problems``, each already
phrased as ``file: where: reason`` — the config (``ConfigError``), the urgency rules
(``RulesError``), the urgency model's labelled mail (``ModelError``), the reply catalog
(``CatalogError``) and the provider profiles (``ProfileError``). The CLI prints them and exits
1; the daemon refuses a reload with them and keeps the running config. Both catch ``Problems``
once, not each loader's error by name.

The queue outcomes are what a stage or a hand-off raises to tell the worker what to do with a
claimed message; ``mailpipe.worker`` maps each to one spool action (its opening docstring is the
table). This module imports nothing of mailpipe's.
"""

from __future__ import annotations

from collections.abc import Sequence


class Problems(Exception):
    """One or more problems in files an operator edits, reported together."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class TemporaryFailure(Exception):
    """The next hop may accept later: a 4xx, a refused connection, a full disk."""


class PartlyDeferred(TemporaryFailure):
    """Some recipients are done with (delivered, or reported as failed); these are to be retried."""

    def __init__(self, reason: str, recipients: Sequence[str]):
        super().__init__(reason)
        self.recipients = tuple(recipients)


class PermanentFailure(Exception):
    """The next hop refused for good: a 5xx."""


class StoreUnavailable(Exception):
    """The database cannot be reached now: the message waits in the spool and is tried again."""


class Consumed(Exception):
    """A stage was this message's destination (a report parser): acknowledged, nothing more to do."""


class Held(Exception):
    """A stage wants a person to decide: the message is parked in ``hold`` with this reason
    until ``mailpipe queue release`` (which marks it overridden) or ``delete``."""


class NoRecipients(Exception):
    """The stages ended without a mailbox to deliver to."""
