"""A real PostgreSQL for the store tests: ``MAILPIPE_TEST_PG_URL`` (a postgresql:// URL) when set, else the server
on 127.0.0.1:5432 with the role `make test` creates. Each test gets a database of its own.
Under CI (``CI`` set) a missing server fails the tests instead of skipping them."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest

DEFAULT_URL = "postgresql://mailpipe_test:mailpipe_test@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("MAILPIPE_TEST_PG_URL", DEFAULT_URL)


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards; its conninfo."""
    try:
        admin = psycopg.connect(server_url(), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"no PostgreSQL for the store tests at {server_url()}: {exc} (`make test` sets one up)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"mailpipe_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(server_url(), name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
