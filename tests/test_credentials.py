"""Agents' passwords and the failed-login lockout."""

from __future__ import annotations

from mailpipe.credentials import Lockout, hash_password, verify_password


def test_a_password_verifies_against_its_scrypt_hash_and_nothing_else() -> None:
    stored = hash_password("correct horse battery staple", log_n=10)
    assert stored.startswith("$scrypt$ln=10,r=8,p=1$")
    assert verify_password("correct horse battery staple", stored)
    assert not verify_password("Correct horse battery staple", stored)
    assert hash_password("same", log_n=10) != hash_password("same", log_n=10)  # salted


def test_a_missing_or_malformed_hash_verifies_nothing() -> None:
    assert not verify_password("anything", None)
    assert not verify_password("anything", "$md5$nonsense")


def test_failures_within_the_window_lock_out_until_the_lockout_ends() -> None:
    now = [0.0]
    lockout = Lockout(max_failures=3, window=60, lockout=300, clock=lambda: now[0])
    for _ in range(2):
        lockout.failed("ip:1", "login:y")
    assert not lockout.locked("ip:1")
    lockout.failed("ip:1", "login:y")
    assert lockout.locked("ip:1") and lockout.locked("login:y")
    now[0] = 301
    assert not lockout.locked("ip:1")


def test_failures_spread_beyond_the_window_do_not_lock() -> None:
    now = [0.0]
    lockout = Lockout(max_failures=3, window=60, lockout=300, clock=lambda: now[0])
    for step in range(5):
        now[0] = step * 40
        lockout.failed("login:y")
    assert not lockout.locked("login:y")


def test_logins_guessed_once_each_are_forgotten_once_their_window_and_lockout_are_over() -> None:
    now = [0.0]
    lockout = Lockout(max_failures=3, window=60, lockout=300, clock=lambda: now[0])
    for guess in range(1000):
        lockout.failed(f"login:guess{guess}")
    for _ in range(3):
        lockout.failed("ip:1")
    now[0] = 301
    lockout.failed("login:new")
    assert lockout.remembered == 1 and not lockout.locked("ip:1")


def test_a_success_forgets_earlier_failures() -> None:
    lockout = Lockout(max_failures=2, window=60, lockout=300)
    lockout.failed("login:y")
    lockout.succeeded("login:y")
    lockout.failed("login:y")
    assert not lockout.locked("login:y")
