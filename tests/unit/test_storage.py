"""Storage on both stores: schema, one transaction per create, nothing left by a failure."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import peewee as pw
import psycopg2
import pytest
from google.protobuf import json_format

from comms import auth, convert, db, housekeeping, migrations, models, store
from comms.service import SequenceService
from comms.v1 import sequences_pb2 as pb
from tests.conftest import POSTGRES_URL, fresh_database_url
from tests.requests import valid_body


class _Context:
    """The few ServicerContext calls the servicer makes, recorded."""

    last: _Context  # the last one aborted

    def __init__(self, active: bool = True, remaining: float = 10.0) -> None:
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.status: grpc.Status | None = None
        self.active = active
        self.remaining = remaining

    def is_active(self) -> bool:
        return self.active

    def time_remaining(self) -> float:
        return self.remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        _Context.last = self
        raise grpc.RpcError(status.details)


CALLER = auth.Principal(subject="tester", scopes=frozenset({"sequences:write"}), brand_ids=None)


def _create(
    database: pw.Database,
    body: dict[str, Any],
    caller: auth.Principal = CALLER,
    context: _Context | None = None,
) -> tuple[pb.Sequence, _Context]:
    """Call the servicer as the interceptor would once the caller's token is verified."""
    context = context or _Context()
    request = json_format.ParseDict(body, pb.CreateSequenceRequest())
    with auth.serving_as(caller):
        return SequenceService(database).CreateSequence(request, context), context


def _stored(database: pw.Database) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with database.connection_context():
        sequences = list(
            models.SequenceRow.select().order_by(models.SequenceRow.id).dicts().execute(database)
        )
        steps = list(
            models.StepRow.select()
            .order_by(models.StepRow.sequence, models.StepRow.position)
            .dicts()
            .execute(database)
        )
    return sequences, steps


def test_migrate_is_idempotent(database: pw.Database) -> None:
    with database.connection_context():
        assert migrations.migrate(database) == []
        assert set(database.get_tables()) >= {"sequences", "steps", "comms_schema_migrations"}


def test_create_stores_the_sequence_and_its_steps(database: pw.Database) -> None:
    before = convert.utc_now()
    message, context = _create(database, valid_body())
    sequences, steps = _stored(database)

    assert context.metadata == (
        ("x-http-code", "201"),
        ("location", f"/v1/sequences/{message.id}"),
    )
    assert len(sequences) == 1
    row = sequences[0]
    assert str(row["id"]) == message.id
    assert {k: row[k] for k in ("brand_id", "name", "description", "status")} == {
        "brand_id": "brand_123",
        "name": "Welcome series",
        "description": "Greets new members",
        "status": "draft",
    }
    assert row["created_at"] == row["updated_at"]
    assert before <= row["created_at"] <= convert.utc_now()
    assert message.created_at.ToDatetime() == row["created_at"]
    assert [
        (str(s["sequence"]), s["position"], s["channel"], s["template_key"], s["delay_minutes"])
        for s in steps
    ] == [
        (message.id, 0, "email", "welcome", 0),
        (message.id, 1, "sms", "nudge", 1440),
        (message.id, 5, "in_app", "tips", 2880),
    ]
    assert [s.id for s in message.steps] == [str(s["id"]) for s in steps]


def test_absent_and_empty_descriptions_stay_apart(database: pw.Database) -> None:
    body = valid_body()
    del body["description"]
    absent, _ = _create(database, body)
    empty, _ = _create(database, valid_body() | {"description": ""})
    with database.connection_context():
        stored = {
            str(r["id"]): r["description"]
            for r in models.SequenceRow.select().dicts().execute(database)
        }
    assert stored == {absent.id: None, empty.id: ""}
    assert json_format.MessageToDict(absent)["description"] is None
    assert json_format.MessageToDict(empty)["description"] == ""


def test_refused_request_stores_nothing(database: pw.Database) -> None:
    body = valid_body()
    body["steps"][1]["channel"] = "CHANNEL_UNSPECIFIED"
    with pytest.raises(grpc.RpcError):
        _create(database, body)
    assert _stored(database) == ([], [])


def test_failure_midway_leaves_no_row(
    database: pw.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sequence row is written, then the steps fail: the transaction takes both back."""

    def broken_insert_many(*_: Any, **__: Any) -> Any:
        raise pw.OperationalError("disk I/O error")

    monkeypatch.setattr(store.STEP_INSERT, "run", broken_insert_many)
    with pytest.raises(grpc.RpcError):
        _create(database, valid_body())
    assert _stored(database) == ([], [])


def test_store_outage_is_unavailable_and_unexpected_errors_are_internal(
    database: pw.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    for error, code, message in [
        (
            pw.OperationalError("could not connect"),
            grpc.StatusCode.UNAVAILABLE,
            "the store is unavailable; retry later",
        ),
        (KeyError("secret detail"), grpc.StatusCode.INTERNAL, "internal error"),
    ]:

        def fail(*_: Any, **__: Any) -> Any:
            raise error  # noqa: B023 (used at once)

        monkeypatch.setattr(store.SEQUENCE_INSERT, "run", fail)
        with pytest.raises(grpc.RpcError):
            _create(database, valid_body())
        context = _Context.last
        assert context.status is not None
        assert (context.status.code, context.status.details) == (code, message)
    assert _stored(database) == ([], [])


def test_database_refuses_a_repeated_position(database: pw.Database) -> None:
    """The unique index backs the validation rule, should a caller bypass the service."""
    now = dt.datetime(2026, 1, 1)
    sequence_id = convert.new_id()
    with database.connection_context(), pytest.raises(pw.IntegrityError), database.atomic():
        store.insert_sequence(
            database,
            {
                "id": sequence_id,
                "brand_id": "b",
                "name": "n",
                "description": None,
                "status": "draft",
                "created_at": now,
                "updated_at": now,
                "etag": "e",
                "revision": 0,
                "changed": True,
                "deleted_at": None,
            },
            [
                {
                    "id": convert.new_id(),
                    "sequence": sequence_id,
                    "position": 1,
                    "channel": "sms",
                    "template_key": "k",
                    "delay_minutes": 0,
                }
                for _ in range(2)
            ],
        )
    assert _stored(database) == ([], [])


def test_ids_are_time_ordered_uuid7() -> None:
    ids = [convert.new_id() for _ in range(50)]
    assert {i.version for i in ids} == {7}
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)


def test_brand_limited_caller_acts_only_for_its_brands(database: pw.Database) -> None:
    limited = auth.Principal(subject="t", scopes=frozenset(), brand_ids=frozenset({"brand_123"}))
    created, _ = _create(database, valid_body(), limited)
    assert created.brand_id == "brand_123"
    with pytest.raises(grpc.RpcError):
        _create(database, valid_body() | {"brand_id": "brand_999"}, limited)
    status = _Context.last.status
    assert status is not None
    assert (status.code, status.details) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "the token may not act for brand 'brand_999'",
    )
    assert ("www-authenticate", 'Bearer realm="comms", error="insufficient_scope"') in (
        status.trailing_metadata
    )
    assert len(_stored(database)[0]) == 1


@pytest.mark.parametrize(
    ("context", "code", "message"),
    [
        (
            _Context(active=False),
            grpc.StatusCode.CANCELLED,
            "the call was cancelled; nothing was stored",
        ),
        (
            _Context(remaining=0),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the deadline passed before the create could commit; nothing was stored",
        ),
    ],
    ids=["cancelled", "deadline passed"],
)
@pytest.mark.parametrize("key", ["", "retry-1"], ids=["no key", "with a key"])
def test_a_caller_gone_before_commit_gets_nothing_stored(
    database: pw.Database, context: _Context, code: grpc.StatusCode, message: str, key: str
) -> None:
    with pytest.raises(grpc.RpcError):
        _create(database, valid_body() | {"request_id": key}, context=context)
    assert context.status is not None
    assert (context.status.code, context.status.details) == (code, message)
    assert _stored(database) == ([], [])
    with database.connection_context():
        assert models.IdempotencyRow.select().count(database) == 0


def _sequence_row(etag: str) -> dict[str, Any]:
    now = convert.utc_now()
    sequence, _ = convert.rows_from_request(pb.CreateSequenceRequest(brand_id="b", name="n"), now)
    return sequence | {"etag": etag}


def test_a_stale_etag_changes_nothing(database: pw.Database) -> None:
    row = _sequence_row("e1")
    with database.connection_context():
        store.insert_sequence(database, row, [])
        assert (
            store.update_sequence_if(database, row["id"], "e0", {"name": "x", "etag": "e2"})
            is False
        )
        assert (
            store.update_sequence_if(database, row["id"], "e1", {"name": "y", "etag": "e2"}) is True
        )
        assert (
            store.update_sequence_if(database, row["id"], "e1", {"name": "z", "etag": "e3"})
            is False
        )
        stored = store.get_sequence(database, row["id"])
    assert stored is not None and (stored[0]["name"], stored[0]["etag"]) == ("y", "e2")


@pytest.fixture
def postgres(
    postgres_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pw.Database]:
    with fresh_database_url("postgres", tmp_path_factory) as url:
        database = db.prepare(url)
        yield database
        database.close_all()


def test_of_two_open_transactions_with_one_etag_the_second_finds_no_row(
    postgres: pw.Database,
) -> None:
    """The second writer's UPDATE waits on the first's row lock and then re-reads the row.
    (PostgreSQL only: SQLite lets one write transaction in at a time, the second reads after
    the first commits, and sees the new etag: test_a_stale_etag_changes_nothing.)"""
    database = postgres
    row = _sequence_row("e1")
    with database.connection_context():
        store.insert_sequence(database, row, [])
    first_updated, second_done = threading.Event(), threading.Event()
    results: dict[str, bool] = {}

    def first() -> None:
        with database.connection_context(), database.atomic():
            results["first"] = store.update_sequence_if(database, row["id"], "e1", {"etag": "a"})
            first_updated.set()
            # The second is now blocked on this row: it cannot finish before this commits.
            results["second waited"] = not second_done.wait(0.5)

    def second() -> None:
        first_updated.wait()
        with database.connection_context(), database.atomic():
            results["second"] = store.update_sequence_if(database, row["id"], "e1", {"etag": "b"})
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"first": True, "second waited": True, "second": False}
    with database.connection_context():
        stored = store.get_sequence(database, row["id"])
    assert stored is not None and stored[0]["etag"] == "a"


def test_migration_3_gives_existing_sequences_an_etag_each(database_url: str) -> None:
    database = db.open_database(database_url)
    try:
        with database.connection_context():
            with database.bind_ctx([]):
                for _, step in migrations.MIGRATIONS[:2]:
                    step(database)
            now = convert.utc_now()
            for n in range(2):
                database.execute_sql(
                    "INSERT INTO sequences (id, brand_id, name, description, status, created_at,"
                    f" updated_at) VALUES ({', '.join([database.param] * 7)})",
                    (convert.new_id().hex, "b", f"s{n}", None, "draft", now, now),
                )
                database.execute_sql(
                    "INSERT INTO steps (id, sequence_id, position, channel, template_key,"
                    f" delay_minutes) SELECT {database.param}, id, 0, 'sms', 'k', 0 FROM"
                    f" sequences WHERE name = {database.param}",
                    (convert.new_id().hex, f"s{n}"),
                )
            migrations.MIGRATIONS[2][1](database)
            rows = list(models.SequenceRow.select().dicts().execute(database))
            steps = models.StepRow.select().count(database)
    finally:
        database.close_all()
    assert [(r["revision"], r["changed"], r["deleted_at"]) for r in rows] == [(0, True, None)] * 2
    assert steps == 2  # the steps of the sequences stay
    assert len({r["etag"] for r in rows}) == 2 and all(len(r["etag"]) == 32 for r in rows)


def test_housekeeping_runs_on_its_own(database: pw.Database) -> None:
    row = _sequence_row("e") | {"deleted_at": convert.utc_now() - dt.timedelta(days=31)}
    with database.connection_context():
        store.insert_sequence(database, row, [])
    sweeper = housekeeping.Sweeper(database, interval=0.05)
    try:
        for _ in range(200):  # waits for the thread, bounded; asserts no timing
            with database.connection_context():
                if store.get_sequence(database, row["id"]) is None:
                    return
            threading.Event().wait(0.05)
        pytest.fail("the housekeeping thread did not purge the sequence deleted 31 days ago")
    finally:
        sweeper.stop()


def _version_2_store(
    url: str, monkeypatch: pytest.MonkeyPatch, keys: list[tuple[str, str, str, dt.datetime]]
) -> tuple[pw.Database, pb.Sequence]:
    """A store as version 2 left it: one sequence created with each (brand, key, name, time),
    written in version 2's tables as its create wrote them. Returns the database and the
    answer the first of them got, as version 2 sent it."""
    database = db.open_database(url)
    with monkeypatch.context() as patch, database.connection_context():
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        assert migrations.migrate(database) == [1, 2]
        sequences = pw.Table("sequences").bind(database)
        steps = pw.Table("steps").bind(database)
        old_keys = pw.Table("idempotency_keys").bind(database)
        answers = []
        for brand, key, name, at in keys:
            sequence_id, step_ids = convert.new_id(), [convert.new_id(), convert.new_id()]
            stamp = at.isoformat(" ")  # as peewee writes a datetime on both stores
            sequences.insert(
                id=sequence_id.hex, brand_id=brand, name=name, description=None,
                status="draft", created_at=stamp, updated_at=stamp,
            ).execute()  # fmt: skip
            for step_id, position, channel, template, delay in [
                (step_ids[1], 7, "sms", "later", 60),
                (step_ids[0], 0, "email", "hello", 0),
            ]:
                steps.insert(
                    id=step_id.hex, sequence_id=sequence_id.hex, position=position,
                    channel=channel, template_key=template, delay_minutes=delay,
                ).execute()  # fmt: skip
            # Version 2's request hash: the request without its key, serialized deterministically.
            request = json_format.ParseDict(_old_request(brand, name), pb.CreateSequenceRequest())
            request_hash = hashlib.sha256(request.SerializeToString(deterministic=True))
            old_keys.insert(
                caller=hashlib.sha256(CALLER.subject.encode()).hexdigest(),
                brand_id=brand, key=key, request_hash=request_hash.hexdigest(),
                sequence_id=sequence_id.hex, created_at=stamp,
            ).execute()  # fmt: skip
            answer = json_format.ParseDict(
                {
                    "id": str(sequence_id),
                    "brand_id": brand,
                    "name": name,
                    "description": None,
                    "status": "draft",
                    "created_at": at.isoformat() + "Z",
                    "updated_at": at.isoformat() + "Z",
                    "steps": [
                        {"id": str(step_ids[0]), "sequence_id": str(sequence_id), "position": 0,
                         "channel": "email", "template_key": "hello", "delay_minutes": 0},
                        {"id": str(step_ids[1]), "sequence_id": str(sequence_id), "position": 7,
                         "channel": "sms", "template_key": "later", "delay_minutes": 60},
                    ],
                },
                pb.Sequence(),
            )  # fmt: skip
            answers.append(answer)
    return database, answers[0]


def _old_request(brand: str, name: str, key: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "brand_id": brand,
        "name": name,
        "steps": [
            {"position": 7, "channel": "sms", "template_key": "later", "delay_minutes": 60},
            {"position": 0, "channel": "email", "template_key": "hello", "delay_minutes": 0},
        ],
    }
    return body | ({"request_id": key} if key else {})


def test_keys_of_version_2_replay_their_answer_after_the_upgrade(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Within the keys' retention of now (a fixed date expires), to the microsecond.
    at = (convert.utc_now() - dt.timedelta(hours=1)).replace(microsecond=123456)
    database, original = _version_2_store(
        database_url,
        monkeypatch,
        [
            ("brand_a", "kept", "Onboarding", at),
            # Reused for another brand, as version 2 allowed: the first use keeps the key.
            ("brand_b", "kept", "Other", at + dt.timedelta(seconds=1)),
        ],
    )
    try:
        with database.connection_context():
            assert migrations.migrate(database) == [3, 4]
            assert "idempotency_keys" not in database.get_tables()
            # Later edits (the lifecycle branch) must not change the replay.
            models.SequenceRow.update(name="edited").execute(database)
        before = _stored(database)
        replay, context = _create(database, _old_request("brand_a", "Onboarding", "kept"))
        assert replay.SerializeToString() == original.SerializeToString()
        assert context.metadata == (
            ("x-http-code", "201"),
            ("location", f"/v1/sequences/{original.id}"),
            ("idempotent-replayed", "true"),
        )
        with pytest.raises(grpc.RpcError):
            _create(database, _old_request("brand_b", "Other", "kept"))
        status = _Context.last.status
        assert status is not None
        assert (status.code, status.details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "the idempotency key 'kept' was already used with a different request",
        )
        assert _stored(database) == before
    finally:
        database.close_all()


def _backend(database: pw.Database) -> int:
    """The PostgreSQL backend of the connection the pool hands out (one idle in it)."""
    with database.connection_context():
        return int(database.execute_sql("SELECT pg_backend_pid()").fetchone()[0])


def _last_query(backend: int) -> str:
    with psycopg2.connect(POSTGRES_URL) as admin, admin.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (backend,))
        return str(cursor.fetchone()[0])


def test_the_pool_hands_out_an_idle_connection_without_a_round_trip(
    postgres: pw.Database,
) -> None:
    backend = _backend(postgres)
    with postgres.connection_context():
        postgres.execute_sql("SELECT 'the last query before the checkout'")
    with postgres.connection_context():  # the same connection, checked out again
        assert _last_query(backend) == "SELECT 'the last query before the checkout'"
        assert int(postgres.execute_sql("SELECT pg_backend_pid()").fetchone()[0]) == backend


def test_connections_dropped_while_idle_cost_one_call(postgres: pw.Database) -> None:
    """The server drops every pooled connection (a restart): the next call is UNAVAILABLE, and
    it empties the pool of the others, so the call after it opens a new one and succeeds."""
    created, _ = _create(postgres, valid_body())
    together = threading.Barrier(3)
    backends: list[int] = []

    def hold() -> None:  # three connections at once, all idle in the pool afterwards
        with postgres.connection_context():
            backends.append(postgres.connection().get_backend_pid())
            together.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(backends)) == 3 and len(postgres._connections) == 3  # type: ignore[attr-defined]
    with psycopg2.connect(POSTGRES_URL) as admin, admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", (backends,))
    service, request = SequenceService(postgres), pb.GetSequenceRequest(id=created.id)
    context = _Context()
    with auth.serving_as(CALLER), pytest.raises(grpc.RpcError):
        service.GetSequence(request, context)
    assert context.status is not None
    assert (context.status.code, context.status.details) == (
        grpc.StatusCode.UNAVAILABLE,
        "the store is unavailable; retry later",
    )
    assert len(postgres._connections) == 0  # type: ignore[attr-defined]
    with auth.serving_as(CALLER):
        assert service.GetSequence(request, _Context()) == created
