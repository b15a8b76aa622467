"""Numbered schema migrations. Each one freezes the models it creates, so that later
changes to models.py never change what an old migration does."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable

import peewee as pw
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator
from playhouse.migrate import migrate as schema_migrate

log = logging.getLogger(__name__)

# Any constant shared by every process of this service: serialises concurrent migrators.
_PG_LOCK_KEY = 0x636F6D6D73  # "comms"


def _m0001_sequences_and_steps(db: pw.Database) -> None:
    class Sequence(pw.Model):
        id = pw.UUIDField(primary_key=True)
        brand_id = pw.CharField(max_length=255)
        name = pw.CharField(max_length=255)
        description = pw.TextField(null=True)
        status = pw.CharField(max_length=32)
        created_at = pw.DateTimeField()
        updated_at = pw.DateTimeField()

        class Meta:
            database = db
            table_name = "sequences"
            # Listing a brand's sequences newest first (issue: Get/List) reads this index.
            indexes = ((("brand_id", "created_at", "id"), False),)

    class Step(pw.Model):
        id = pw.UUIDField(primary_key=True)
        # No index of its own: the unique (sequence_id, position) index serves lookups.
        sequence = pw.ForeignKeyField(
            Sequence, column_name="sequence_id", on_delete="CASCADE", index=False
        )
        position = pw.IntegerField()
        channel = pw.CharField(max_length=16)
        template_key = pw.CharField(max_length=255)
        delay_minutes = pw.IntegerField()

        class Meta:
            database = db
            table_name = "steps"
            # Positions are unique within a sequence; the index also serves reads by sequence.
            indexes = ((("sequence", "position"), True),)

    db.create_tables([Sequence, Step])


def _m0002_idempotency_and_secrets(db: pw.Database) -> None:
    class IdempotencyKey(pw.Model):
        # Keys are scoped to the caller (a hash of the token's subject) and the brand.
        caller = pw.CharField(max_length=64)
        brand_id = pw.CharField(max_length=255)
        key = pw.CharField(max_length=255)
        request_hash = pw.CharField(max_length=64)
        # No foreign key: the key row is inserted first, so that a concurrent create with
        # the same key waits on it (PostgreSQL) and then finds it.
        sequence_id = pw.UUIDField()
        created_at = pw.DateTimeField(index=True)  # for expiry

        class Meta:
            database = db
            table_name = "idempotency_keys"
            primary_key = pw.CompositeKey("caller", "brand_id", "key")

    class Secret(pw.Model):
        name = pw.CharField(max_length=64, primary_key=True)
        value = pw.CharField(max_length=255)

        class Meta:
            database = db
            table_name = "comms_secrets"

    db.create_tables([IdempotencyKey, Secret])
    # Signs page tokens; kept in the store so that every server process shares it.
    Secret.create(name="page_token_key", value=secrets.token_hex(32))


def _m0003_lifecycle(db: pw.Database) -> None:
    """Issue 13: sequences change (etag, revision, soft delete) and keep what went live."""
    migrator = (
        PostgresqlMigrator(db) if isinstance(db, pw.PostgresqlDatabase) else SqliteMigrator(db)
    )
    schema_migrate(
        # Every existing sequence gets an etag of its own just below, before it is required.
        migrator.add_column("sequences", "etag", pw.CharField(max_length=64, default="")),
        migrator.add_column("sequences", "revision", pw.IntegerField(default=0)),
        # Whether name, description or steps changed since the last revision went live.
        migrator.add_column("sequences", "changed", pw.BooleanField(default=True)),
        migrator.add_column("sequences", "deleted_at", pw.DateTimeField(null=True)),
        # The purge of sequences deleted 30 days ago reads this index.
        migrator.add_index("sequences", ("deleted_at",), False),
    )
    ids = [row[0] for row in db.execute_sql("SELECT id FROM sequences").fetchall()]
    for sequence_id in ids:
        db.execute_sql(
            f"UPDATE sequences SET etag = {db.param} WHERE id = {db.param}",
            (secrets.token_hex(16), sequence_id),
        )

    class Sequence(pw.Model):
        id = pw.UUIDField(primary_key=True)

        class Meta:
            database = db
            table_name = "sequences"

    class Revision(pw.Model):
        # Immutable: inserted by an activate or resume, never updated.
        sequence = pw.ForeignKeyField(
            Sequence, column_name="sequence_id", on_delete="CASCADE", index=False
        )
        revision = pw.IntegerField()
        created_at = pw.DateTimeField()
        created_by = pw.CharField(max_length=255)
        name = pw.CharField(max_length=255)
        description = pw.TextField(null=True)
        steps = pw.TextField()  # the steps as they went live, a JSON array

        class Meta:
            database = db
            table_name = "sequence_revisions"
            primary_key = pw.CompositeKey("sequence", "revision")

    db.create_tables([Revision])


MIGRATIONS: list[tuple[int, Callable[[pw.Database], None]]] = [
    (1, _m0001_sequences_and_steps),
    (2, _m0002_idempotency_and_secrets),
    (3, _m0003_lifecycle),
]


class _Applied(pw.Model):
    version = pw.IntegerField(primary_key=True)
    applied_at = pw.DateTimeField()

    class Meta:
        table_name = "comms_schema_migrations"


def migrate(db: pw.Database) -> list[int]:
    """Apply every migration not yet applied, each in its own transaction; return their numbers.

    Safe to run from several processes at once: PostgreSQL takes an advisory lock, SQLite's
    write transaction (BEGIN IMMEDIATE) serialises them."""
    applied_now: list[int] = []
    with db.bind_ctx([_Applied]):
        db.create_tables([_Applied], safe=True)
        for version, step in MIGRATIONS:
            with db.atomic():
                if isinstance(db, pw.PostgresqlDatabase):
                    db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
                if _Applied.select().where(_Applied.version == version).exists():
                    continue
                step(db)
                now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
                _Applied.create(version=version, applied_at=now)
                applied_now.append(version)
                log.info("applied migration %04d (%s)", version, step.__name__)
    return applied_now
