"""Which store a config names: SQLite in the state directory, or a shared PostgreSQL."""

from __future__ import annotations

from mailpipe.config import Config
from mailpipe.store.sql import SQLStore
from mailpipe.store.sqlite import SQLiteStore


def open_store(config: Config) -> SQLStore:
    if config.store.url:
        from mailpipe.store.postgres import PostgresStore  # psycopg only when PostgreSQL is configured

        return PostgresStore(config.store.url)
    return SQLiteStore(config.store_path)
