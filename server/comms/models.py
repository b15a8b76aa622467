"""Peewee models of the stored rows. They carry no database: every query names its own
(see store.py), so that one process may hold several (tests do)."""

from __future__ import annotations

import peewee as pw


class SequenceRow(pw.Model):
    id = pw.UUIDField(primary_key=True)
    brand_id = pw.CharField(max_length=255)
    name = pw.CharField(max_length=255)
    description = pw.TextField(null=True)
    status = pw.CharField(max_length=32)
    created_at = pw.DateTimeField()  # naive, always UTC
    updated_at = pw.DateTimeField()
    etag = pw.CharField(max_length=64)
    revision = pw.IntegerField()  # the latest revision that went live; 0 before the first
    changed = pw.BooleanField()  # name, description or steps changed since that revision
    deleted_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "sequences"


class StepRow(pw.Model):
    id = pw.UUIDField(primary_key=True)
    sequence = pw.ForeignKeyField(
        SequenceRow, column_name="sequence_id", on_delete="CASCADE", backref="steps"
    )
    position = pw.IntegerField()
    channel = pw.CharField(max_length=16)
    template_key = pw.CharField(max_length=255)
    delay_minutes = pw.IntegerField()

    class Meta:
        table_name = "steps"


class RevisionRow(pw.Model):
    sequence = pw.ForeignKeyField(SequenceRow, column_name="sequence_id", on_delete="CASCADE")
    revision = pw.IntegerField()
    created_at = pw.DateTimeField()
    created_by = pw.CharField(max_length=255)
    name = pw.CharField(max_length=255)
    description = pw.TextField(null=True)
    steps = pw.TextField()  # JSON: [{id, position, channel, template_key, delay_minutes}]

    class Meta:
        table_name = "sequence_revisions"
        primary_key = pw.CompositeKey("sequence", "revision")


class IdempotencyRow(pw.Model):
    """The first answer to a keyed call, replayed to its retries."""

    caller = pw.CharField(max_length=64)
    key = pw.CharField(max_length=255)
    method = pw.CharField(max_length=255)
    request_hash = pw.CharField(max_length=64)
    response = pw.BlobField()  # the serialized response message
    response_metadata = pw.TextField()  # JSON [[name, value], ...]: status, Location
    created_at = pw.DateTimeField()

    class Meta:
        table_name = "idempotent_answers"
        primary_key = pw.CompositeKey("caller", "key")


class SecretRow(pw.Model):
    name = pw.CharField(max_length=64, primary_key=True)
    value = pw.CharField(max_length=255)

    class Meta:
        table_name = "comms_secrets"
