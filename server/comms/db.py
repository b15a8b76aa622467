"""The database: opened once from a URL at start-up, bound to the models, migrated."""

from __future__ import annotations

from urllib.parse import urlsplit

import peewee as pw
from playhouse import db_url

from comms import migrations

# WAL lets reads run beside the single writer; synchronous=FULL makes every commit
# durable before the client hears 201; the busy timeout queues writers instead of failing.
# SQLite's own checkpoint after a commit is kept: checkpointing from a thread beside the
# writer instead made tails worse, not better (p99 110-830 ms against 26-31 ms).
_SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1}
_POOLED = {"sqlite": "sqlite+pool", "postgres": "postgres+pool", "postgresql": "postgresql+pool"}


def open_database(
    url: str, max_connections: int = 32, sqlite_busy_timeout_ms: int = 5000
) -> pw.Database:
    """A pooled Peewee database for a sqlite:/// or postgresql:// URL.

    Every call opens a connection from the pool and gives it back, so idle threads hold none."""
    scheme = urlsplit(url).scheme
    if scheme not in _POOLED:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:///path or postgresql://..."
        )
    pooled_url = _POOLED[scheme] + url[len(scheme) :]
    options: dict[str, object] = {"max_connections": max_connections, "stale_timeout": 300}
    if scheme == "sqlite":
        # A pooled connection may serve another thread later, one thread at a time.
        options |= {
            "pragmas": _SQLITE_PRAGMAS | {"busy_timeout": sqlite_busy_timeout_ms},
            "lock_type": "IMMEDIATE",
            "check_same_thread": False,
        }
    database: pw.Database = db_url.connect(pooled_url, **options)
    return database


def prepare(url: str, max_connections: int = 32, sqlite_busy_timeout_ms: int = 5000) -> pw.Database:
    """Open the database and bring its schema up to date."""
    database = open_database(url, max_connections, sqlite_busy_timeout_ms)
    with database.connection_context():
        migrations.migrate(database)
    return database


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@", 1) if password else url
