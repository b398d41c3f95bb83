"""Placement probes log in to seed mailboxes the way providers allow today: OAuth 2.0 (XOAUTH2,
OAUTHBEARER) with the refresh-token grant, or an app password; a failed login says why.
Against Dovecot with an oauth2 passdb and a local identity provider (tests/oauth_peer.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator

import pytest

from mailpipe import config
from mailpipe.config.seeds import Seed, problems
from mailpipe.metrics import Metrics
from mailpipe.monitors.oauth import LoginError, TokenSource
from mailpipe.monitors.probes import Mailbox, Pending, Prober, ProbeSettings
from tests.dovecot_peer import Dovecot
from tests.oauth_peer import IdentityProvider

USER = "probe@seed.test"
PROBE = (b"From: support@example.test\r\nTo: probe@seed.test\r\nSubject: Delivery check mp-0001\r\n"
         b"Message-ID: <probe-mp-0001@mx>\r\n\r\nbody\r\n")


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.stop()


@pytest.fixture
def dovecot(idp: IdentityProvider) -> Iterator[Dovecot]:
    server = Dovecot({USER: "app-password"}, introspection_url=f"{idp.url}/introspect", scope="imap")
    yield server
    server.stop()


def seed(dovecot: Dovecot, idp: IdentityProvider, grant: str, **changes: str) -> Seed:
    base = Seed("outlook", USER, "127.0.0.1", USER, imap_port=dovecot.port, imap_security="none",
                token_endpoint=f"{idp.url}/token", client_id="probe", client_secret="s3cret",
                refresh_token=grant, scope="imap")
    return dataclasses.replace(base, **changes)


def find(target: Seed, tokens: TokenSource | None = None) -> dict:
    return Mailbox(target, tokens or (TokenSource(target) if target.oauth2 else None)).find(["mp-0001"])


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_a_probe_logs_in_with_an_access_token_from_the_refresh_token_grant(dovecot, idp, mechanism) -> None:
    dovecot.file(USER, "Junk", PROBE)
    assert find(seed(dovecot, idp, idp.grant(USER), mechanism=mechanism)) == {"mp-0001": ("spam", {})}
    assert idp.requests[0]["grant_type"] == "refresh_token" and idp.requests[0]["client_secret"] == "s3cret"


def test_a_probe_still_logs_in_with_an_app_password_where_providers_take_one(dovecot) -> None:
    dovecot.file(USER, "INBOX", PROBE)
    target = Seed("yahoo", USER, "127.0.0.1", USER, "app-password", imap_port=dovecot.port, imap_security="none")
    assert find(target) == {"mp-0001": ("inbox", {})}


def test_the_access_token_is_reused_until_it_expires_then_refreshed(dovecot, idp) -> None:
    target = seed(dovecot, idp, idp.grant(USER))
    tokens = TokenSource(target)
    find(target, tokens)
    find(target, tokens)
    assert len(idp.requests) == 1
    idp.expire_all()  # the mailbox now refuses the cached token: refreshed once, and the login succeeds
    find(target, tokens)
    assert len(idp.requests) == 2


def test_secrets_can_live_in_files_of_their_own(dovecot, idp, tmp_path) -> None:
    (tmp_path / "refresh").write_text(idp.grant(USER) + "\n")
    (tmp_path / "secret").write_text("s3cret\n")
    target = seed(dovecot, idp, "", refresh_token_file=str(tmp_path / "refresh"), client_secret="",
                  client_secret_file=str(tmp_path / "secret"))
    assert find(target) == {}


@pytest.mark.parametrize(("change", "reason"), [
    ({"refresh_token": "rt-revoked"}, "expired_grant"),
    ({"scope": "imap admin"}, "wrong_scope"),
    ({"client_secret": "wrong"}, "bad_client"),
    ({"token_endpoint": "http://127.0.0.1:9/token"}, "token_endpoint"),
])
def test_a_refused_token_request_says_why(dovecot, idp, change, reason) -> None:
    with pytest.raises(LoginError) as error:
        find(seed(dovecot, idp, idp.grant(USER), **change))
    assert error.value.reason == reason


def test_a_token_the_mailbox_refuses_names_the_scope_it_carries(dovecot, idp) -> None:
    target = seed(dovecot, idp, idp.grant(USER, scopes="imap profile"), scope="profile")
    with pytest.raises(LoginError) as error:
        find(target)
    assert error.value.reason == "token_rejected"  # Dovecot answers 401 whatever the cause
    assert "scope granted 'profile'" in error.value.detail


def test_a_token_granted_with_less_scope_than_asked_is_a_wrong_scope(dovecot, idp) -> None:
    idp_answer = idp._token
    idp._token = lambda form: (lambda status, body: (status, {**body, "scope": "profile"}))(*idp_answer(form))
    with pytest.raises(LoginError) as error:
        find(seed(dovecot, idp, idp.grant(USER, scopes="imap profile")))
    assert error.value.reason == "wrong_scope"


def test_a_revoked_app_password_says_so(dovecot) -> None:
    target = Seed("yahoo", USER, "127.0.0.1", USER, "revoked", imap_port=dovecot.port, imap_security="none")
    with pytest.raises(LoginError) as error:
        find(target)
    assert error.value.reason == "bad_password"


def test_no_secret_reaches_a_log_line_a_repr_or_an_error(dovecot, idp, caplog) -> None:
    refresh = idp.grant(USER)
    target = seed(dovecot, idp, refresh)
    find(target)
    idp.revoke(refresh)
    metrics = Metrics()
    prober = Prober(ProbeSettings((dataclasses.replace(target, refresh_token="rt-gone"),), 600, 300, 15,
                                  "support@example.test", "a", "mx"), spool=None, metrics=metrics)  # type: ignore[arg-type]
    prober._pending["mp-0001"] = Pending("mp-0001", prober.settings.seeds[0], 0.0)
    with caplog.at_level(logging.DEBUG, logger="mailpipe"):
        asyncio.run(prober.check())
    shown = repr(target) + caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    access = next(iter(idp.tokens))
    assert "s3cret" not in shown and refresh not in shown and access not in shown and "rt-gone" not in shown
    assert [r.reason for r in caplog.records] == ["expired_grant"]


def test_a_failed_login_is_counted_by_reason_and_the_probe_is_not_called_missing(dovecot, idp) -> None:
    target = seed(dovecot, idp, "rt-revoked")
    metrics = Metrics()
    prober = Prober(ProbeSettings((target,), 600, 0, 15, "support@example.test", "a", "mx"), spool=None,  # type: ignore[arg-type]
                    metrics=metrics)
    prober._pending["mp-0001"] = Pending("mp-0001", target, 0.0)
    assert asyncio.run(prober.check()) == []
    assert metrics.probe_login_failures.labels("microsoft", "expired_grant")._value.get() == 1
    assert metrics.probe_login_ok.labels("microsoft")._value.get() == 0
    assert not prober._pending


def test_an_oauth2_seed_needs_its_client_and_refresh_token_and_https() -> None:
    target = Seed("outlook", USER, "imap.example.test", USER, token_endpoint="http://idp.example.test/token")
    assert problems("f.toml", (target,)) == [
        "f.toml: monitors.seeds[0].token_endpoint: must be https:// (plain http only on loopback)",
        "f.toml: monitors.seeds[0].client_id: missing (OAuth 2.0 needs the client id registered for the probe)",
        "f.toml: monitors.seeds[0].refresh_token: missing (or refresh_token_file)"]
    assert problems("f.toml", (Seed("yahoo", USER, "imap.example.test", USER),)) == [
        "f.toml: monitors.seeds[0].password: missing (or password_file, or token_endpoint for OAuth 2.0)"]



def test_an_oauth2_seed_is_read_from_the_config_file_and_a_wrong_mechanism_named(tmp_path) -> None:
    path = tmp_path / "mailpipe.toml"
    seed_table = ('[[monitors.seeds]]\nprovider = "outlook"\naddress = "seed@outlook.test"\nimap_host = "imap.test"\n'
                  'username = "seed@outlook.test"\ntoken_endpoint = "https://idp.test/token"\nclient_id = "c"\n'
                  f'refresh_token_file = "{tmp_path / "rt"}"\nscope = "imap"\n')
    (tmp_path / "rt").write_text("rt-1\n")
    path.write_text(seed_table + 'mechanism = "oauthbearer"\n')
    loaded = config.load(path).monitors.seeds[0]
    assert (loaded.oauth2, loaded.mechanism, loaded.refresh_token_file) == (True, "oauthbearer", str(tmp_path / "rt"))
    path.write_text(seed_table + 'mechanism = "cram-md5"\n')
    with pytest.raises(config.ConfigError) as error:
        config.load(path)
    assert error.value.problems == [
        f"{path}: monitors.seeds[0].mechanism: 'cram-md5' is not one of xoauth2, oauthbearer"]


def test_a_new_refresh_token_put_in_its_file_is_used_after_an_expired_grant(dovecot, idp, tmp_path) -> None:
    (tmp_path / "refresh").write_text("rt-revoked\n")
    target = seed(dovecot, idp, "", refresh_token_file=str(tmp_path / "refresh"))
    tokens = TokenSource(target)
    with pytest.raises(LoginError):
        find(target, tokens)
    (tmp_path / "refresh").write_text(idp.grant(USER) + "\n")  # the operator authorised the probe again
    assert find(target, tokens) == {}
