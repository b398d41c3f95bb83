"""Which recipients are desk commands: ``COMMAND+ARGUMENT@support-domain``.

One scheme for every command (``urgency+critical@``, and the desk's others as they come), so an
agent learns one habit and a client's address book can hold them. A recipient in another
domain, or whose local part names no command, is ordinary mail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailpipe.addresses import canonical


@dataclass(frozen=True)
class Command:
    name: str
    arguments: tuple[str, ...]
    address: str


@dataclass(frozen=True)
class Usage:
    """How a command is addressed, and what it refuses at RCPT (a reason, or None)."""

    text: str
    check: Callable[[tuple[str, ...]], str | None]


def command_of(address: str, domains: frozenset[str], known: dict[str, Usage]) -> Command | None:
    local, _, domain = canonical(address).rpartition("@")
    if domain not in domains or "+" not in local:
        return None
    name, *arguments = local.split("+")
    if name not in known:
        return None
    return Command(name, tuple(arguments), address)
