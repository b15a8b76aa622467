"""The idempotency mechanism on each store: what is stored, replayed, refused and forgotten."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import peewee as pw
import pytest

from comms import auth, convert, idempotency, models, store, writer
from comms.errors import RpcFailure
from comms.v1 import sequences_pb2 as pb

CALLER = auth.Principal(subject="tester", scopes=frozenset(), brand_ids=None)
CREATE = "comms.v1.SequenceService.CreateSequence"
ANSWER = idempotency.Answer(
    pb.Sequence(id="s-1", brand_id="b", name="first"),
    (("x-http-code", "201"), ("location", "/v1/sequences/s-1")),
)


@pytest.fixture(autouse=True)
def _serving() -> Iterator[None]:
    with auth.serving_as(CALLER):
        yield


def _key(key: str = "k", method: str = CREATE, request: Any = None) -> idempotency.Key:
    found = idempotency.key_for(key, method, request or pb.CreateSequenceRequest(name="n"))
    assert found is not None
    return found


def _run(
    database: pw.Database,
    key: idempotency.Key | None,
    answer: idempotency.Answer[pb.Sequence] = ANSWER,
    transact: Callable[[Callable[[], Any]], Any] | None = None,
) -> tuple[idempotency.Answer[pb.Sequence], bool]:
    calls: list[int] = []

    def work() -> idempotency.Answer[pb.Sequence]:
        calls.append(1)
        return answer

    result = idempotency.run(database, transact or _writers(database), key, pb.Sequence, work)
    assert len(calls) == (0 if result[1] else 1)  # a replay never runs the work
    return result


@functools.cache
def _writers(database: pw.Database) -> Callable[[Callable[[], Any]], Any]:
    """One transaction runner per database (on SQLite a writer thread), as the service has."""
    return writer.transactions(database)


def _rows(database: pw.Database) -> list[dict[str, Any]]:
    with database.connection_context():
        return list(models.IdempotencyRow.select().dicts().execute(database))


def test_the_first_answer_is_stored_and_replayed(database: pw.Database) -> None:
    before = convert.utc_now()
    assert _run(database, _key()) == (ANSWER, False)
    [row] = _rows(database)
    assert {k: bytes(v) if k == "response" else v for k, v in row.items() if k != "created_at"} == {
        "caller": hashlib.sha256(b"tester").hexdigest(),
        "key": "k",
        "method": CREATE,
        "request_hash": idempotency.fingerprint(pb.CreateSequenceRequest(name="n")),
        "response": ANSWER.message.SerializeToString(),
        "response_metadata": '[["x-http-code","201"],["location","/v1/sequences/s-1"]]',
    }
    assert before <= row["created_at"] <= convert.utc_now()
    other = idempotency.Answer(pb.Sequence(id="s-2"), ())
    assert _run(database, _key(), other) == (ANSWER, True)


def test_without_a_key_nothing_is_stored(database: pw.Database) -> None:
    assert _run(database, None) == (ANSWER, False)
    assert _rows(database) == []


@pytest.mark.parametrize(
    "retry",
    [
        ("another method", {"method": "comms.v1.SequenceService.UpdateSequence"}),
        ("another request", {"request": pb.CreateSequenceRequest(name="other")}),
    ],
    ids=lambda r: r[0],
)
def test_the_same_key_with_anything_else_is_refused(
    database: pw.Database, retry: tuple[str, dict[str, Any]]
) -> None:
    _run(database, _key())
    with pytest.raises(RpcFailure) as refused:
        _run(database, _key(**retry[1]))
    assert (refused.value.code, refused.value.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the idempotency key 'k' was already used with a different request",
    )
    assert ("x-error-code", "idempotency_key_reused") in refused.value.status.trailing_metadata
    assert len(_rows(database)) == 1


def test_keys_are_the_callers_own(database: pw.Database) -> None:
    _run(database, _key())
    with auth.serving_as(auth.Principal(subject="other", scopes=frozenset(), brand_ids=None)):
        other = idempotency.Answer(pb.Sequence(id="s-2"), ())
        assert _run(database, _key(), other) == (other, False)
    assert len(_rows(database)) == 2


def test_the_fingerprint_ignores_the_key_and_holds_the_path_id() -> None:
    assert idempotency.fingerprint(
        pb.CreateSequenceRequest(name="n", request_id="a")
    ) == idempotency.fingerprint(pb.CreateSequenceRequest(name="n"))
    # GET /v1/sequences/{id}: the transcoder puts the path's id in the request.
    assert idempotency.fingerprint(pb.GetSequenceRequest(id="1")) != idempotency.fingerprint(
        pb.GetSequenceRequest(id="2")
    )


def test_an_expired_key_runs_the_work_again(database: pw.Database) -> None:
    _run(database, _key())
    with database.connection_context():
        models.IdempotencyRow.update(
            created_at=convert.utc_now() - idempotency.RETENTION - dt.timedelta(seconds=1)
        ).execute(database)
    other = idempotency.Answer(pb.Sequence(id="s-2"), ())
    assert _run(database, _key(), other) == (other, False)
    [row] = _rows(database)
    assert bytes(row["response"]) == other.message.SerializeToString()


@pytest.mark.parametrize(
    "failure",
    [
        pw.IntegrityError("duplicate key"),  # our key insert met the winner's
        RpcFailure(grpc.StatusCode.ABORTED, "etag mismatch"),  # our change lost to the winner's
    ],
    ids=["key conflict", "lost the race"],
)
def test_a_call_that_loses_to_a_concurrent_one_with_its_key_replays_it(
    database: pw.Database, failure: Exception
) -> None:
    plain = _writers(database)

    def losing(work: Callable[[], Any]) -> Any:
        _run(database, _key(), transact=plain)  # the winner commits first
        raise failure

    loser = idempotency.Answer(pb.Sequence(id="never"), ())
    assert _run(database, _key(), loser, transact=losing) == (ANSWER, True)
    assert len(_rows(database)) == 1


def test_a_failure_with_no_winner_is_the_failure(database: pw.Database) -> None:
    def failing(work: Callable[[], Any]) -> Any:
        raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "not allowed")

    with pytest.raises(RpcFailure, match="not allowed"):
        _run(database, _key(), transact=failing)
    assert _rows(database) == []


def test_the_purge_forgets_keys_past_their_retention_only(database: pw.Database) -> None:
    for key in ("old", "recent"):
        _run(database, _key(key))
    with database.connection_context():
        models.IdempotencyRow.update(
            created_at=convert.utc_now() - idempotency.RETENTION - dt.timedelta(minutes=1)
        ).where(models.IdempotencyRow.key == "old").execute(database)
        assert store.purge_idempotency(database, convert.utc_now() - idempotency.RETENTION) == 1
    assert [row["key"] for row in _rows(database)] == ["recent"]
