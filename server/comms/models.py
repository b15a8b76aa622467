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
