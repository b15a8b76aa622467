"""The database: opened once from a URL at start-up, bound to the models, migrated."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import peewee as pw
from playhouse import db_url
from playhouse.pool import PooledPostgresqlDatabase

from comms import migrations

# WAL lets reads run beside the single writer; synchronous=FULL makes every commit
# durable before the client hears 201; the busy timeout queues writers instead of failing.
# SQLite's own checkpoint after a commit is kept: checkpointing from a thread beside the
# writer instead made tails worse, not better (p99 110-830 ms against 26-31 ms).
_SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1}


class _PooledPostgres(PooledPostgresqlDatabase):
    """peewee checks each idle connection it hands out with a SELECT 1 round trip: a quarter
    of a get's store time and CPU. Here a checkout asks only what psycopg2 knows locally. A
    connection the server dropped while idle then fails the one call using it (UNAVAILABLE,
    which callers retry), and when it comes back broken the pool closes its idle ones too: a
    restart or a failover breaks them all, so it costs a process about one call, not one per
    pooled connection."""

    def _is_closed(self, conn: Any) -> bool:
        # peewee's own reuse test, which sends nothing for an idle connection.
        return bool(conn.closed) or not self._adapter.is_connection_reusable(conn)

    def _can_reuse(self, conn: Any) -> bool:
        if super()._can_reuse(conn):
            return True
        self.close_idle()
        return False


def open_database(
    url: str, max_connections: int = 32, sqlite_busy_timeout_ms: int = 5000
) -> pw.Database:
    """A pooled Peewee database for a sqlite:/// or postgresql:// URL.

    Every call opens a connection from the pool and gives it back, so idle threads hold none.
    A connection the store broke (a restart, a failover) fails the one call using it, which
    the service answers UNAVAILABLE, and is dropped from the pool, not handed out again (on
    PostgreSQL with the idle ones, see _PooledPostgres)."""
    scheme = urlsplit(url).scheme
    options: dict[str, object] = {"max_connections": max_connections, "stale_timeout": 300}
    if scheme in ("postgres", "postgresql"):
        # The whole URL goes to libpq as it is (as the dbname, which libpq expands), so that
        # its multi-host form works: postgresql://h1:5432,h2:5432/db?target_session_attrs=
        # read-write connects to whichever host is the primary now. playhouse.db_url would
        # split it into one host and one port.
        postgres: pw.Database = _PooledPostgres(url, **options)
        return postgres
    if scheme != "sqlite":
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:///path or postgresql://..."
        )
    # A pooled connection may serve another thread later, one thread at a time.
    options |= {
        "pragmas": _SQLITE_PRAGMAS | {"busy_timeout": sqlite_busy_timeout_ms},
        "lock_type": "IMMEDIATE",
        "check_same_thread": False,
    }
    database: pw.Database = db_url.connect("sqlite+pool" + url[len(scheme) :], **options)
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
