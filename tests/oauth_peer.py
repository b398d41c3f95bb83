"""A local OAuth 2.0 identity provider for probe tests: a token endpoint (refresh-token grant,
RFC 6749 6) that issues access tokens and lets them expire, and the introspection endpoint
(RFC 7662) Dovecot's oauth2 passdb asks. Grants can be revoked and tokens expired at will."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Grant:
    user: str
    scopes: frozenset[str]
    client_id: str
    client_secret: str


@dataclass
class IdentityProvider:
    lifetime: float = 3600.0
    grants: dict[str, Grant] = field(default_factory=dict)  # refresh token -> grant
    tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # access token -> user, scope, expiry
    requests: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                status, body = (provider._token(form) if self.path == "/token" else provider._introspect(form))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def grant(self, user: str, scopes: str = "imap", client_id: str = "probe", client_secret: str = "s3cret") -> str:
        refresh = "rt-" + secrets.token_hex(8)
        self.grants[refresh] = Grant(user, frozenset(scopes.split()), client_id, client_secret)
        return refresh

    def revoke(self, refresh_token: str) -> None:
        self.grants.pop(refresh_token, None)

    def expire_all(self) -> None:
        self.tokens = {token: (user, scope, 0.0) for token, (user, scope, _) in self.tokens.items()}

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        self.requests.append(form)
        grant = self.grants.get(form.get("refresh_token", ""))
        if form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        if grant is None:
            return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
        if (form.get("client_id"), form.get("client_secret")) != (grant.client_id, grant.client_secret):
            return 401, {"error": "invalid_client"}
        wanted = frozenset(form.get("scope", " ".join(grant.scopes)).split())
        if not wanted <= grant.scopes:
            return 400, {"error": "invalid_scope"}
        token = "at-" + secrets.token_hex(16)
        self.tokens[token] = (grant.user, " ".join(sorted(wanted)), time.time() + self.lifetime)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": int(self.lifetime),
                     "scope": " ".join(sorted(wanted))}

    def _introspect(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        user, scope, expiry = self.tokens.get(form.get("token", ""), ("", "", 0.0))
        if not user or expiry < time.time():
            return 200, {"active": False}
        return 200, {"active": True, "username": user, "scope": scope}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
