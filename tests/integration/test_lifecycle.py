"""The life of a sequence over gRPC, straight to the server and through Envoy's listener, on
each store: edits, moves, soft delete, revisions, etags and the order of the checks."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from comms import convert, housekeeping, store
from comms.models import RevisionRow, SequenceRow, StepRow
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.integration.conftest import Stack
from tests.requests import valid_body

ROUTES = ["direct", "envoy"]
STEP = {"position": 0, "channel": "sms", "template_key": "k", "delay_minutes": 0}


def _stub(stack: Stack, route: str = "direct", token: str = "") -> Any:
    target = stack.grpc_target if route == "direct" else stack.envoy_target
    return pb_grpc.SequenceServiceStub(stack.channel(target, token=token))


def _brand() -> str:
    return f"brand_{uuid.uuid4().hex[:12]}"


def _create(stub: Any, **fields: Any) -> pb.Sequence:
    body = valid_body() | {"brand_id": _brand()} | fields
    return stub.CreateSequence(json_format.ParseDict(body, pb.CreateSequenceRequest()), timeout=10)


def _update(
    stub: Any, sequence_id: str, body: dict[str, Any], mask: str | None = None, **call: Any
) -> pb.Sequence:
    request = pb.UpdateSequenceRequest()
    json_format.ParseDict(body | {"id": sequence_id}, request.sequence)
    if mask is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=mask.split(",")))
    return stub.UpdateSequence(request, timeout=10, **call)


MOVES = {
    "activate": ("ActivateSequence", pb.ActivateSequenceRequest),
    "pause": ("PauseSequence", pb.PauseSequenceRequest),
    "resume": ("ResumeSequence", pb.ResumeSequenceRequest),
    "archive": ("ArchiveSequence", pb.ArchiveSequenceRequest),
    "delete": ("DeleteSequence", pb.DeleteSequenceRequest),
    "undelete": ("UndeleteSequence", pb.UndeleteSequenceRequest),
}


def _move(stub: Any, move: str, sequence_id: str, **fields: Any) -> pb.Sequence:
    method, request = MOVES[move]
    metadata = fields.pop("metadata", None)
    call = getattr(stub, method)
    return call(request(id=sequence_id, **fields), timeout=10, metadata=metadata)


def _refused(call: Any) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _stamp(message: Any) -> dt.datetime:
    return message.ToDatetime()


@pytest.mark.parametrize("route", ROUTES)
def test_the_walk_draft_to_undelete(stack: Stack, route: str) -> None:
    stub = _stub(stack, route)
    created = _create(stub)
    assert (created.status, created.revision, created.deleted_at.WhichOneof("kind")) == (
        pb.draft,
        0,
        "null_value",
    )
    seen = [created]

    def step(answer: pb.Sequence) -> pb.Sequence:
        last = seen[-1]
        assert answer.etag != last.etag and answer.etag
        assert _stamp(answer.updated_at) > _stamp(last.updated_at)
        assert answer.created_at == created.created_at
        assert answer == stub.GetSequence(pb.GetSequenceRequest(id=created.id), timeout=10)
        seen.append(answer)
        return answer

    edited = step(_update(stub, created.id, {"name": "Renamed"}, "name"))
    assert (edited.name, edited.status, edited.revision) == ("Renamed", pb.draft, 0)
    active = step(_move(stub, "activate", created.id))
    assert (active.status, active.revision) == (pb.active, 1)
    paused = step(_move(stub, "pause", created.id))
    assert (paused.status, paused.revision) == (pb.paused, 1)
    step(_update(stub, created.id, {"steps": [STEP]}, "steps"))
    resumed = step(_move(stub, "resume", created.id))
    assert (resumed.status, resumed.revision) == (pb.active, 2)
    assert [(s.position, s.channel) for s in resumed.steps] == [(0, pb.sms)]
    archived = step(_move(stub, "archive", created.id))
    assert (archived.status, archived.revision) == (pb.archived, 2)
    deleted = step(_move(stub, "delete", created.id))
    assert deleted.status == pb.archived
    assert dt.datetime.fromisoformat(deleted.deleted_at.string_value) == _stamp(
        deleted.updated_at
    ).replace(tzinfo=dt.UTC)
    restored = step(_move(stub, "undelete", created.id))
    assert (restored.status, restored.deleted_at.WhichOneof("kind")) == (pb.archived, "null_value")

    revisions = stub.ListSequenceRevisions(
        pb.ListSequenceRevisionsRequest(sequence_id=created.id), timeout=10
    )
    assert revisions.next_page_token == ""
    assert [(r.revision, r.name, len(r.steps)) for r in revisions.revisions] == [
        (2, "Renamed", 1),
        (1, "Renamed", 3),
    ]
    first = stub.GetSequenceRevision(
        pb.GetSequenceRevisionRequest(sequence_id=created.id, revision=1), timeout=10
    )
    assert first == revisions.revisions[1]
    assert (first.sequence_id, first.created_by, first.created_at) == (
        created.id,
        "tester",
        active.updated_at,
    )
    assert [s.id for s in first.steps] == [s.id for s in edited.steps]
    assert first.description.string_value == "Greets new members"


def test_a_resume_without_a_change_records_no_revision(stack: Stack) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    for move in ("activate", "pause", "resume", "pause", "resume"):
        answer = _move(stub, move, sequence.id)
    assert answer.revision == 1
    with stack.database.connection_context():
        assert (
            RevisionRow.select().where(RevisionRow.sequence == sequence.id).count(stack.database)
            == 1
        )


@pytest.mark.parametrize(
    ("moves", "move", "message"),
    [
        (
            [],
            "pause",
            "cannot pause a sequence that is draft; it allows: activate, archive, edit, delete",
        ),
        (
            [],
            "resume",
            "cannot resume a sequence that is draft; it allows: activate, archive, edit, delete",
        ),
        (
            [],
            "undelete",
            "cannot undelete a sequence that is draft; it allows: activate, archive, edit, delete",
        ),
        (
            ["activate"],
            "activate",
            "cannot activate a sequence that is active; it allows: pause, archive",
        ),
        (
            ["activate"],
            "delete",
            "cannot delete a sequence that is active; it allows: pause, archive",
        ),
        (
            ["activate", "pause"],
            "pause",
            "cannot pause a sequence that is paused; it allows: resume, archive, edit",
        ),
        (["archive"], "activate", "cannot activate a sequence that is archived; it allows: delete"),
        (
            ["archive", "delete"],
            "delete",
            "cannot delete a sequence that is deleted (status archived); it allows: undelete",
        ),
        (
            ["delete"],
            "activate",
            "cannot activate a sequence that is deleted (status draft); it allows: undelete",
        ),
    ],
)
@pytest.mark.parametrize("route", ROUTES)
def test_a_refused_move_is_failed_precondition_and_changes_nothing(
    stack: Stack, route: str, moves: list[str], move: str, message: str
) -> None:
    stub = _stub(stack, route)
    sequence = _create(stub)
    for earlier in moves:
        sequence = _move(stub, earlier, sequence.id)
    error = _refused(lambda: _move(stub, move, sequence.id))
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, message)
    status = rpc_status.from_call(error)
    failure = error_details_pb2.PreconditionFailure()
    assert status is not None and status.details[0].Unpack(failure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("STATE", f"sequences/{sequence.id}", message)
    ]
    assert stub.GetSequence(pb.GetSequenceRequest(id=sequence.id), timeout=10) == sequence


@pytest.mark.parametrize("moves", [["activate"], ["archive"], ["delete"]])
def test_only_draft_and_paused_are_editable(stack: Stack, moves: list[str]) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    for move in moves:
        sequence = _move(stub, move, sequence.id)
    error = _refused(lambda: _update(stub, sequence.id, {"name": "x"}, "name"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("cannot edit a sequence that is ")
    assert stub.GetSequence(pb.GetSequenceRequest(id=sequence.id), timeout=10) == sequence


@pytest.mark.parametrize("route", ROUTES)
def test_a_stale_etag_is_aborted_with_error_info(stack: Stack, route: str) -> None:
    stub = _stub(stack, route)
    sequence = _create(stub)
    stale = sequence.etag
    current = _update(stub, sequence.id, {"name": "new"}, "name", metadata=[("if-match", stale)])
    for attempt in (
        lambda: _move(stub, "activate", sequence.id, etag=stale),
        lambda: _move(stub, "archive", sequence.id, metadata=[("if-match", f'"{stale}"')]),
        lambda: _update(stub, sequence.id, {"name": "x", "etag": stale}, "name"),
    ):
        error = _refused(attempt)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.ABORTED,
            f"etag {stale!r} is not the sequence's current etag: it changed since; read it again",
        )
        info = error_details_pb2.ErrorInfo()
        assert rpc_status.from_call(error).details[0].Unpack(info)
        assert (info.reason, info.domain) == ("ETAG_MISMATCH", "comms.v1.SequenceService")
    assert stub.GetSequence(pb.GetSequenceRequest(id=sequence.id), timeout=10) == current


@pytest.mark.parametrize(
    "if_match", [None, "{etag}", '"{etag}"', "*"], ids=["none", "bare", "quoted", "star"]
)
def test_the_current_etag_is_taken_in_every_form(stack: Stack, if_match: str | None) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    metadata = [("if-match", if_match.format(etag=sequence.etag))] if if_match else None
    active = _move(stub, "activate", sequence.id, metadata=metadata)
    assert active.status == pb.active


def test_get_sends_the_etag_as_metadata(stack: Stack) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    fetched, call = stub.GetSequence.with_call(pb.GetSequenceRequest(id=sequence.id), timeout=10)
    assert ("etag", f'"{sequence.etag}"') in call.initial_metadata()
    assert fetched.etag == sequence.etag


def test_the_checks_come_in_the_contracts_order(stack: Stack) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    archived = _move(stub, "archive", sequence.id)
    stale = sequence.etag
    # 404 before 422: an unknown sequence with a bad etag.
    error = _refused(lambda: _move(stub, "activate", str(convert.new_id()), etag="a\x00b"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # 422 before 412: a stale etag with a bad request_id.
    error = _refused(lambda: _move(stub, "activate", sequence.id, etag=stale, request_id="é"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id: must match the regular expression ^[ -~]*$",
    )
    # 412 before 409: a stale etag on a move the state refuses.
    error = _refused(lambda: _move(stub, "activate", sequence.id, etag=stale))
    assert error.code() == grpc.StatusCode.ABORTED
    # 409 with the current etag.
    error = _refused(lambda: _move(stub, "activate", sequence.id, etag=archived.etag))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The body's etag and If-Match must agree.
    error = _refused(
        lambda: _move(stub, "pause", sequence.id, etag="a", metadata=[("if-match", "b")])
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etag: must equal the If-Match header when both are sent",
    )


def test_another_brands_sequence_is_not_found(stack: Stack) -> None:
    sequence = _create(_stub(stack))
    limited = _stub(stack, token=stack.keys.token(brand_ids=["brand_elsewhere"]))
    for attempt in (
        lambda: _move(limited, "activate", sequence.id),
        lambda: _update(limited, sequence.id, {"name": "x"}, "name"),
        lambda: limited.ListSequenceRevisions(
            pb.ListSequenceRevisionsRequest(sequence_id=sequence.id), timeout=10
        ),
    ):
        error = _refused(attempt)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.NOT_FOUND,
            f"sequence {sequence.id!r} not found",
        )


def test_moves_need_the_publish_scope(stack: Stack) -> None:
    sequence = _create(_stub(stack))
    writer = _stub(stack, token=stack.keys.token(scope="sequences:read sequences:write"))
    for move in ("activate", "pause", "resume", "archive"):
        error = _refused(lambda move=move: _move(writer, move, sequence.id))
        assert (error.code(), error.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "the token lacks the scope 'sequences:publish'",
        )
    deleted = _move(writer, "delete", sequence.id)  # sequences:write
    assert _move(writer, "undelete", deleted.id).deleted_at.WhichOneof("kind") == "null_value"


@pytest.mark.parametrize("move", ["activate", "resume"])
def test_going_live_needs_a_step(stack: Stack, move: str) -> None:
    stub = _stub(stack)
    sequence = _create(stub, steps=[STEP])
    if move == "resume":
        _move(stub, "activate", sequence.id)
        _move(stub, "pause", sequence.id)
    sequence = _update(stub, sequence.id, {"steps": []}, "steps")
    assert list(sequence.steps) == []
    error = _refused(lambda: _move(stub, move, sequence.id))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"steps: must have at least 1 step to {move} the sequence",
    )
    assert stub.GetSequence(pb.GetSequenceRequest(id=sequence.id), timeout=10) == sequence


def test_update_replaces_what_the_mask_names(stack: Stack) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    # Without a mask, what the body holds; brand_id is not editable and is left as it is.
    answer = _update(stub, sequence.id, {"description": None, "brand_id": "other"})
    assert answer.description.WhichOneof("kind") == "null_value"
    assert (answer.name, answer.brand_id, len(answer.steps)) == (
        "Welcome series",
        sequence.brand_id,
        3,
    )
    # Named but not sent: cleared (description), or refused (name).
    answer = _update(stub, sequence.id, {"description": "back"}, "description")
    assert answer.description.string_value == "back"
    cleared = _update(stub, sequence.id, {"name": "ignored"}, "description")
    assert (cleared.name, cleared.description.WhichOneof("kind")) == (answer.name, "null_value")
    error = _refused(lambda: _update(stub, sequence.id, {}, "name"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "name: is required",
    )
    error = _refused(lambda: _update(stub, sequence.id, {}, "status"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "update_mask: may name only name, description, steps, got 'status'",
    )
    row, steps = stack.stored(sequence.id)
    assert (row["name"], row["description"], len(steps), row["etag"]) == (
        "Welcome series",
        None,
        3,
        cleared.etag,
    )


def test_an_edit_to_the_same_values_changes_nothing(stack: Stack) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    steps = [json_format.MessageToDict(s, preserving_proto_field_name=True) for s in sequence.steps]
    same = _update(
        stub,
        sequence.id,
        {"name": sequence.name, "description": "Greets new members", "steps": steps},
        "name,description,steps",
    )
    assert same == sequence


def test_steps_are_replaced_as_a_whole(stack: Stack) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    answer = _update(stub, sequence.id, {"steps": [STEP | {"position": 9}, STEP]})
    assert [(s.position, s.sequence_id) for s in answer.steps] == [
        (0, sequence.id),
        (9, sequence.id),
    ]
    _, stored = stack.stored(sequence.id)
    assert [str(s["id"]) for s in stored] == [s.id for s in answer.steps]
    assert not {s.id for s in answer.steps} & {s.id for s in sequence.steps}


def test_a_deleted_sequence_keeps_answering_get_and_its_revisions(stack: Stack) -> None:
    stub = _stub(stack)
    brand = _brand()
    kept = _create(stub, brand_id=brand)
    sequence = _create(stub, brand_id=brand)
    _move(stub, "activate", sequence.id)
    _move(stub, "archive", sequence.id)
    deleted = _move(stub, "delete", sequence.id)
    assert stub.GetSequence(pb.GetSequenceRequest(id=sequence.id), timeout=10) == deleted

    def listed(**query: Any) -> list[str]:
        answer = stub.ListSequences(pb.ListSequencesRequest(brand_id=brand, **query), timeout=10)
        return [s.id for s in answer.sequences]

    assert listed() == [kept.id]
    assert listed(show_deleted=True) == [sequence.id, kept.id]
    assert listed(status=[pb.archived]) == []
    assert listed(status=[pb.archived], show_deleted=True) == [sequence.id]
    assert listed(status=[pb.draft, pb.active]) == [kept.id]
    revisions = stub.ListSequenceRevisions(
        pb.ListSequenceRevisionsRequest(sequence_id=sequence.id), timeout=10
    )
    assert [r.revision for r in revisions.revisions] == [1]


def test_an_unknown_status_is_refused_naming_status(stack: Stack) -> None:
    stub = _stub(stack)
    for status in (0, 9):
        error = _refused(
            lambda status=status: stub.ListSequences(
                pb.ListSequencesRequest(brand_id="b", status=[pb.active, status]), timeout=10
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("status[1]: "), error.details()


def test_revisions_page_newest_first(stack: Stack) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    _move(stub, "activate", sequence.id)
    for n in range(4):
        _move(stub, "pause", sequence.id)
        _update(stub, sequence.id, {"name": f"v{n + 2}"}, "name")
        _move(stub, "resume", sequence.id)
    seen, token = [], ""
    while True:
        page = stub.ListSequenceRevisions(
            pb.ListSequenceRevisionsRequest(sequence_id=sequence.id, page_size=2, page_token=token),
            timeout=10,
        )
        seen += [(r.revision, r.name) for r in page.revisions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [(5, "v5"), (4, "v4"), (3, "v3"), (2, "v2"), (1, "Welcome series")]
    other = _create(stub)
    error = _refused(
        lambda: stub.ListSequenceRevisions(
            pb.ListSequenceRevisionsRequest(sequence_id=other.id, page_token=token or "x.y"),
            timeout=10,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("revision", "code"), [(2, "NOT_FOUND"), (0, "INVALID_ARGUMENT")])
def test_an_unknown_revision(stack: Stack, revision: int, code: str) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    _move(stub, "activate", sequence.id)
    error = _refused(
        lambda: stub.GetSequenceRevision(
            pb.GetSequenceRevisionRequest(sequence_id=sequence.id, revision=revision), timeout=10
        )
    )
    assert error.code() == getattr(grpc.StatusCode, code)
    expected = {
        2: f"revision 2 of sequence {sequence.id!r} not found",
        0: "revision: must be at least 1, got 0",
    }
    assert error.details() == expected[revision]


@pytest.mark.parametrize("move", ["activate", "update"])
def test_of_many_writers_with_one_etag_exactly_one_wins(stack: Stack, move: str) -> None:
    stub = _stub(stack)
    sequence = _create(stub)
    writers = 16
    barrier = threading.Barrier(writers)
    outcomes: list[Any] = [None] * writers

    def write(i: int) -> None:
        barrier.wait()
        try:
            if move == "activate":
                outcomes[i] = _move(stub, "activate", sequence.id, etag=sequence.etag)
            else:
                outcomes[i] = _update(
                    stub, sequence.id, {"name": f"writer {i}", "etag": sequence.etag}, "name"
                )
        except grpc.RpcError as error:
            outcomes[i] = error.code()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [o for o in outcomes if isinstance(o, pb.Sequence)]
    assert len(won) == 1, outcomes
    assert [o for o in outcomes if not isinstance(o, pb.Sequence)] == [grpc.StatusCode.ABORTED] * (
        writers - 1
    )
    assert stub.GetSequence(pb.GetSequenceRequest(id=sequence.id), timeout=10) == won[0]
    with stack.database.connection_context():
        revisions = RevisionRow.select().where(RevisionRow.sequence == sequence.id)
        assert revisions.count(stack.database) == (1 if move == "activate" else 0)


def test_the_purge_removes_sequences_deleted_30_days_ago(stack: Stack) -> None:
    stub = _stub(stack)
    old, recent, live = (_create(stub) for _ in range(3))
    for sequence in (old, recent):
        _move(stub, "activate", sequence.id)
        _move(stub, "archive", sequence.id)
        _move(stub, "delete", sequence.id)
    now = convert.utc_now()
    with stack.database.connection_context():
        for sequence, age in (
            (old, dt.timedelta(days=30, seconds=1)),
            (recent, dt.timedelta(days=29)),
        ):
            SequenceRow.update(deleted_at=now - age).where(SequenceRow.id == sequence.id).execute(
                stack.database
            )
    # Past its time but not yet purged: already not found.
    error = _refused(lambda: stub.GetSequence(pb.GetSequenceRequest(id=old.id), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert housekeeping.sweep(stack.database, convert.utc_now())[1] >= 1
    with stack.database.connection_context():
        assert store.get_sequence(stack.database, uuid.UUID(old.id)) is None
        for model in (StepRow, RevisionRow):
            assert model.select().where(model.sequence == old.id).count(stack.database) == 0
        assert (
            RevisionRow.select().where(RevisionRow.sequence == recent.id).count(stack.database) == 1
        )
    for kept in (recent, live):
        assert stub.GetSequence(pb.GetSequenceRequest(id=kept.id), timeout=10).id == kept.id
