"""Numbered schema migrations. Each one freezes the models it creates, so that later
changes to models.py never change what an old migration does."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import uuid
from collections.abc import Callable

import peewee as pw
from google.protobuf import struct_pb2

from comms.v1 import sequences_pb2 as pb

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


def _m0004_idempotent_answers(db: pw.Database) -> None:
    """Keys store the first answer itself (response bytes and metadata), keyed by caller
    alone, instead of pointing at a sequence whose later changes a replay would show.

    Rows of earlier versions get the answer rebuilt from their sequence as that version
    answered it: until now a sequence never changed after its create, so this is the answer
    first sent. Where one caller used a key for creates in two brands (allowed until now),
    the first use keeps it; a retry of the other is told the key was reused."""

    class Sequence(pw.Model):  # the columns the answer was built from, as of migration 2
        id = pw.UUIDField(primary_key=True)
        brand_id = pw.CharField()
        name = pw.CharField()
        description = pw.TextField(null=True)
        status = pw.CharField()
        created_at = pw.DateTimeField()
        updated_at = pw.DateTimeField()

        class Meta:
            database = db
            table_name = "sequences"

    class Step(pw.Model):
        id = pw.UUIDField(primary_key=True)
        sequence_id = pw.UUIDField()
        position = pw.IntegerField()
        channel = pw.CharField()
        template_key = pw.CharField()
        delay_minutes = pw.IntegerField()

        class Meta:
            database = db
            table_name = "steps"

    class OldKey(pw.Model):
        caller = pw.CharField()
        brand_id = pw.CharField()
        key = pw.CharField()
        request_hash = pw.CharField()
        sequence_id = pw.UUIDField()
        created_at = pw.DateTimeField()

        class Meta:
            database = db
            table_name = "idempotency_keys"
            primary_key = pw.CompositeKey("caller", "brand_id", "key")

    class IdempotentAnswer(pw.Model):
        caller = pw.CharField(max_length=64)  # a hash of the token's subject
        key = pw.CharField(max_length=255)
        method = pw.CharField(max_length=255)  # the RPC's full name
        request_hash = pw.CharField(max_length=64)
        response = pw.BlobField()  # the serialized response message
        response_metadata = pw.TextField()  # JSON [[name, value], ...]: status, Location
        created_at = pw.DateTimeField(index=True)  # for expiry

        class Meta:
            database = db
            table_name = "idempotent_answers"
            primary_key = pw.CompositeKey("caller", "key")

    def answer(sequence: Sequence, steps: list[Step]) -> tuple[bytes, str]:
        """What CreateSequence sent as of migration 2: its Sequence and its metadata."""
        message = pb.Sequence(
            id=str(sequence.id),
            brand_id=sequence.brand_id,
            name=sequence.name,
            description=(
                struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
                if sequence.description is None
                else struct_pb2.Value(string_value=sequence.description)
            ),
            status=sequence.status,
            steps=[
                pb.Step(
                    id=str(step.id),
                    sequence_id=str(sequence.id),
                    position=step.position,
                    channel=step.channel,
                    template_key=step.template_key,
                    delay_minutes=step.delay_minutes,
                )
                for step in sorted(steps, key=lambda s: s.position)
            ],
        )
        message.created_at.FromDatetime(sequence.created_at)
        message.updated_at.FromDatetime(sequence.updated_at)
        metadata = [["x-http-code", "201"], ["location", f"/v1/sequences/{sequence.id}"]]
        return message.SerializeToString(), json.dumps(metadata, separators=(",", ":"))

    db.create_tables([IdempotentAnswer])
    old = list(OldKey.select().order_by(OldKey.created_at, OldKey.brand_id))
    kept: dict[tuple[str, str], OldKey] = {}
    for row in old:
        kept.setdefault((row.caller, row.key), row)
    lost = 0
    for start in range(0, len(kept), 500):
        batch = list(kept.values())[start : start + 500]
        ids = [row.sequence_id for row in batch]
        sequences = {s.id: s for s in Sequence.select().where(Sequence.id.in_(ids))}
        steps: dict[uuid.UUID, list[Step]] = {}
        for step in Step.select().where(Step.sequence_id.in_(ids)):
            steps.setdefault(step.sequence_id, []).append(step)
        rows = []
        for key in batch:
            if key.sequence_id not in sequences:  # never written with its key; nothing to replay
                lost += 1
                continue
            response, metadata = answer(sequences[key.sequence_id], steps.get(key.sequence_id, []))
            rows.append(
                {
                    "caller": key.caller,
                    "key": key.key,
                    "method": "comms.v1.SequenceService.CreateSequence",
                    "request_hash": key.request_hash,
                    "response": response,
                    "response_metadata": metadata,
                    "created_at": key.created_at,
                }
            )
        if rows:
            IdempotentAnswer.insert_many(rows).execute()
    db.drop_tables([OldKey])
    log.info(
        "idempotency keys: %d kept with their answers, %d reused across brands, %d without a "
        "sequence",
        len(kept) - lost,
        len(old) - len(kept),
        lost,
    )


# 3 is taken by the lifecycle branch (sequence etag, revision, deleted_at; revisions).
MIGRATIONS: list[tuple[int, Callable[[pw.Database], None]]] = [
    (1, _m0001_sequences_and_steps),
    (2, _m0002_idempotency_and_secrets),
    (4, _m0004_idempotent_answers),
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
