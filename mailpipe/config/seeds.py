"""Seed mailboxes for placement probes: where they are and how a probe logs in to them.

A seed logs in with a password (an app password where the provider still takes one: Yahoo,
personal Gmail) or, when ``token_endpoint`` is set, with OAuth 2.0 (SASL XOAUTH2 or
OAUTHBEARER) and an access token got by the refresh-token grant. Each secret may be written in
the config or kept in a file of its own (``*_file``, first line). Secrets are left out of the
dataclass's repr, so a logged or printed seed shows none. ``problems`` holds the checks that
span a seed's keys; ``mailpipe.monitors.oauth`` does the logging in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailpipe.addresses import syntax_problem
from mailpipe.providers import ALIASES


@dataclass(frozen=True)
class Seed:
    """A mailbox at a provider that placement probes are sent to and looked for in."""

    provider: str  # the reply catalog's name (google, yahoo, microsoft) or an alias (gmail, outlook)
    address: str
    imap_host: str
    username: str
    password: str = field(default="", repr=False)  # or an app password
    imap_port: int = 993
    imap_security: Literal["tls", "starttls", "none"] = "tls"
    inbox: str = "INBOX"
    spam: str = "Junk"
    password_file: str = ""
    # OAuth 2.0: the token endpoint (e.g. https://oauth2.googleapis.com/token) turns it on.
    token_endpoint: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    client_secret_file: str = ""
    refresh_token: str = field(default="", repr=False)
    refresh_token_file: str = ""
    scope: str = ""  # e.g. https://mail.google.com/ or https://outlook.office.com/IMAP.AccessAsUser.All offline_access
    mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"

    @property
    def oauth2(self) -> bool:
        return bool(self.token_endpoint)


def problems(source: str, seeds: tuple[Seed, ...]) -> list[str]:
    """What is wrong with the seeds beyond their types, each naming file and key."""
    found = []
    for index, seed in enumerate(seeds):
        key = f"{source}: monitors.seeds[{index}]"
        if seed.provider.lower() not in ALIASES:
            found.append(f"{key}.provider: {seed.provider!r} is not a known provider")
        if reason := syntax_problem(seed.address):
            found.append(f"{key}.address: {seed.address!r}: {reason}")
        if seed.oauth2:
            if not seed.token_endpoint.startswith(("https://", "http://127.", "http://localhost", "http://[::1]")):
                found.append(f"{key}.token_endpoint: must be https:// (plain http only on loopback)")
            if not seed.client_id:
                found.append(f"{key}.client_id: missing (OAuth 2.0 needs the client id registered for the probe)")
            if not (seed.refresh_token or seed.refresh_token_file):
                found.append(f"{key}.refresh_token: missing (or refresh_token_file)")
        elif not (seed.password or seed.password_file):
            found.append(f"{key}.password: missing (or password_file, or token_endpoint for OAuth 2.0)")
        for name in ("password_file", "client_secret_file", "refresh_token_file"):
            value = getattr(seed, name)
            if value and not Path(value).is_file():
                found.append(f"{key}.{name}: no such file {value!r}")
    return found
