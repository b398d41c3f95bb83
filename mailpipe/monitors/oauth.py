"""How a placement probe logs in to a seed mailbox: OAuth 2.0 where providers require it, an
(app) password where they still take one.

Outlook.com ended password IMAP logins on 2024-09-16 and Google Workspace in March 2025; a
probe for them logs in with SASL XOAUTH2 or OAUTHBEARER (RFC 7628) and an access token got by
the refresh-token grant (RFC 6749 6) at the provider's token endpoint. Yahoo and personal Gmail
still take app passwords through plain LOGIN. A failed login raises ``LoginError`` with a reason
an operator can act on, read from the token endpoint's ``error`` (RFC 6749 5.2) or the IMAP
server's SASL failure (RFC 7628 3.2.2):

- ``expired_grant``: the refresh token was revoked or expired (``invalid_grant``): authorise again.
- ``wrong_scope``: the token lacks the IMAP scope (``invalid_scope``, ``insufficient_scope``).
- ``bad_client``: the client id or secret is refused (``invalid_client``, ``unauthorized_client``).
- ``token_endpoint``: the token endpoint is unreachable or answers nonsense.
- ``token_rejected``: the mailbox refused a fresh access token.
- ``bad_password``: the mailbox refused the password (app passwords revoked, basic auth ended).

Secrets (client secret, refresh and access tokens, passwords) never appear in a log line, an
exception message or a repr. Blocking (urllib, imaplib): call from a thread.
"""

from __future__ import annotations

import base64
import imaplib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mailpipe.config import Seed

REASONS = ("expired_grant", "wrong_scope", "bad_client", "token_endpoint", "token_rejected", "bad_password")
_TOKEN_ERRORS = {"invalid_grant": "expired_grant", "invalid_scope": "wrong_scope", "invalid_client": "bad_client",
                 "unauthorized_client": "bad_client"}
_NOT_ECHOED = frozenset({"offline_access", "openid"})  # Microsoft grants them without listing them back
_EARLY = 60.0  # refresh this long before the access token expires
_TIMEOUT = 20.0


class LoginError(Exception):
    """A probe could not log in; ``reason`` is one of REASONS, ``detail`` safe to log."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TokenSource:
    """Access tokens for one seed by the refresh-token grant, kept until shortly before expiry."""

    def __init__(self, seed: Seed, clock: Callable[[], float] = time.monotonic):
        self.seed = seed
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0
        self.granted_scope = ""  # what the token endpoint said the token carries
        self._refresh_token = ""  # read at the first refresh; replaced when the endpoint rotates it

    def access_token(self) -> str:
        with self._lock:
            if not self._token or self._clock() >= self._expires:
                self._refresh()
            return self._token

    def forget(self) -> None:
        """Drop the cached access token (the mailbox refused it), so the next login refreshes."""
        with self._lock:
            self._token, self._expires = "", 0.0

    def _refresh(self) -> None:
        seed = self.seed
        self._refresh_token = self._refresh_token or _secret(seed.refresh_token, seed.refresh_token_file,
                                                             "refresh_token")
        form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token, "client_id": seed.client_id}
        secret = _secret(seed.client_secret, seed.client_secret_file, "client_secret")
        if secret:
            form["client_secret"] = secret
        if seed.scope:
            form["scope"] = seed.scope
        request = urllib.request.Request(seed.token_endpoint, data=urllib.parse.urlencode(form).encode(),
                                         headers={"Content-Type": "application/x-www-form-urlencoded",
                                                  "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
                answer = _json(response.read())
        except urllib.error.HTTPError as exc:
            code = str(_json(exc.read()).get("error", ""))
            if code == "invalid_grant":
                self._refresh_token = ""  # read the file again next time: the operator may have replaced it
            raise LoginError(_TOKEN_ERRORS.get(code, "token_endpoint"),
                             f"token endpoint answered HTTP {exc.code} {code or '(no error code)'}") from None
        except (OSError, ValueError) as exc:
            raise LoginError("token_endpoint", f"token endpoint unreachable: {type(exc).__name__}") from None
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise LoginError("token_endpoint", "token endpoint answered without an access_token")
        lifetime = answer.get("expires_in", 3600)
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) else 3600.0
        if isinstance(answer.get("refresh_token"), str) and answer["refresh_token"]:
            self._refresh_token = answer["refresh_token"]  # rotated (RFC 6749 6): the old one is now spent
        self.granted_scope = str(answer.get("scope", seed.scope))
        if not set(seed.scope.split()) - _NOT_ECHOED <= set(self.granted_scope.split()):
            raise LoginError("wrong_scope", f"asked for scope {seed.scope!r}, granted {self.granted_scope!r}")
        self._token, self._expires = token, self._clock() + max(lifetime - _EARLY, 0.0)


def log_in(client: imaplib.IMAP4, seed: Seed, tokens: TokenSource | None) -> None:
    """Authenticate ``client`` as the seed's user, by OAuth 2.0 when it has a token endpoint."""
    if tokens is None:
        try:
            client.login(seed.username, _secret(seed.password, seed.password_file, "password"))
        except imaplib.IMAP4.error:
            raise LoginError("bad_password", "the mailbox refused the password") from None
        return
    for attempt in (1, 2):  # a cached token the server no longer takes: refresh once and retry
        failure, wanted = _sasl(client, seed, tokens.access_token())
        if failure is None:
            return
        tokens.forget()
        if failure == "wrong_scope" or attempt == 2:
            raise LoginError(failure, f"the mailbox refused a fresh access token ({seed.mechanism}); scope granted "
                                      f"{tokens.granted_scope!r}, the server names {wanted!r}")


def _sasl(client: imaplib.IMAP4, seed: Seed, token: str) -> tuple[str | None, str]:
    """(None, "") on success, else the reason and the scope named by the server's SASL failure
    (RFC 7628 3.2.2). Dovecot answers 401 for any refused token, so only a server that says
    ``insufficient_scope`` (or 403) is read as a wrong scope at this stage."""
    challenges: list[bytes] = []

    def respond(challenge: bytes) -> bytes:
        if not challenges and not challenge:
            challenges.append(b"")
            return initial_response(seed, token)
        challenges.append(challenge)
        return b"\x01" if seed.mechanism == "oauthbearer" else b""  # end the exchange; the server says NO

    try:
        client.authenticate(seed.mechanism.upper(), respond)
    except imaplib.IMAP4.error:
        failure = _json(challenges[-1]) if challenges else {}
        reason = "wrong_scope" if str(failure.get("status", "")) in ("insufficient_scope", "403") else "token_rejected"
        return reason, str(failure.get("scope", ""))
    return None, ""


def initial_response(seed: Seed, token: str) -> bytes:
    """The client's first SASL message: XOAUTH2 (Google, Microsoft) or OAUTHBEARER (RFC 7628)."""
    if seed.mechanism == "oauthbearer":
        gs2 = "n,a=" + seed.username.replace("=", "=3D").replace(",", "=2C") + ","
        return f"{gs2}\x01host={seed.imap_host}\x01port={seed.imap_port}\x01auth=Bearer {token}\x01\x01".encode()
    return f"user={seed.username}\x01auth=Bearer {token}\x01\x01".encode()


_UNREADABLE = {"client_secret": "bad_client", "refresh_token": "expired_grant", "password": "bad_password"}


def _secret(value: str, file: str, key: str) -> str:
    """A secret from the config or from the file it names (first line), so it can live apart
    (and be replaced, e.g. a new refresh token, without touching the config)."""
    if value or not file:
        return value
    try:
        return Path(file).read_text("utf-8").strip()
    except OSError as exc:
        raise LoginError(_UNREADABLE[key], f"{key}_file unreadable: {exc.strerror}") from None


def _json(raw: bytes) -> dict[str, object]:
    try:
        value = json.loads(base64.b64decode(raw, validate=True) if raw and not raw.lstrip().startswith(b"{")
                           else raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
