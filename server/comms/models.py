"""Peewee models of the stored sequences. They carry no database: db.bind() attaches one."""

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


MODELS: list[type[pw.Model]] = [SequenceRow, StepRow]
