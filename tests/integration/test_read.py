"""Get, List and idempotent creates, over HTTP through Envoy and over gRPC, on each store."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import json_format

from comms import convert, db, store
from comms.models import IdempotencyRow, SequenceRow, StepRow
from comms.server import create_server
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.conftest import fresh_database_url
from tests.integration.conftest import Response, Stack
from tests.requests import valid_body
from tests.tokens import Keys


def _brand() -> str:
    """A brand of its own per test, so that listings see only what the test made."""
    return f"brand_{uuid.uuid4().hex[:12]}"


def _create(
    stack: Stack, brand: str, name: str = "s", headers: dict[str, str | None] | None = None
) -> Response:
    return stack.envoy.post(valid_body() | {"brand_id": brand, "name": name}, headers=headers)


def _list(stack: Stack, brand: str, query: str = "") -> Response:
    return stack.envoy.request("GET", f"/v1/sequences?brand_id={quote(brand)}{query}")


def _stub(stack: Stack, route: str = "direct", token: str = "") -> Any:
    target = stack.grpc_target if route == "direct" else stack.envoy_target
    return pb_grpc.SequenceServiceStub(stack.channel(target, token=token))


# -- Get ---------------------------------------------------------------------------------


def test_get_returns_what_create_returned(stack: Stack) -> None:
    created = _create(stack, _brand())
    assert created.status == 201
    body = created.json()
    assert created.headers["location"] == f"/v1/sequences/{body['id']}"
    fetched = stack.envoy.request("GET", created.headers["location"])
    assert fetched.status == 200
    assert fetched.json() == body


@pytest.mark.parametrize("route", ["direct", "envoy"])
def test_get_over_grpc(stack: Stack, route: str) -> None:
    request = json_format.ParseDict(
        valid_body() | {"brand_id": _brand()}, pb.CreateSequenceRequest()
    )
    created = _stub(stack, route).CreateSequence(request, timeout=10)
    fetched = _stub(stack, route).GetSequence(pb.GetSequenceRequest(id=created.id), timeout=10)
    assert fetched == created


@pytest.mark.parametrize(
    "sequence_id",
    [str(convert.new_id()), "not-a-uuid", "x" * 300],
    ids=["unknown", "malformed", "long"],
)
def test_get_unknown_or_malformed_is_404(stack: Stack, sequence_id: str) -> None:
    response = stack.envoy.request("GET", f"/v1/sequences/{sequence_id}")
    shown = sequence_id if len(sequence_id) <= 64 else sequence_id[:64] + "..."
    assert (response.status, response.json()) == (
        404,
        {"error": "not_found", "message": f"sequence {shown!r} not found"},
    )
    with pytest.raises(grpc.RpcError) as caught:
        _stub(stack).GetSequence(pb.GetSequenceRequest(id=sequence_id), timeout=10)
    error: Any = caught.value
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        f"sequence {shown!r} not found",
    )


def test_get_of_another_brand_is_404_to_a_brand_limited_token(stack: Stack) -> None:
    created = _create(stack, _brand()).json()
    limited = stack.keys.token(brand_ids=["brand_elsewhere"])
    response = stack.envoy.request(
        "GET", f"/v1/sequences/{created['id']}", headers={"Authorization": f"Bearer {limited}"}
    )
    assert (response.status, response.json()["error"]) == (404, "not_found")


def test_reads_need_the_read_scope(stack: Stack) -> None:
    writer = stack.keys.token(scope="sequences:write")
    created = _create(stack, _brand(), headers={"Authorization": f"Bearer {writer}"}).json()
    for path in (f"/v1/sequences/{created['id']}", f"/v1/sequences?brand_id={created['brand_id']}"):
        response = stack.envoy.request("GET", path, headers={"Authorization": f"Bearer {writer}"})
        assert (response.status, response.json()) == (
            403,
            {"error": "permission_denied", "message": "the token lacks the scope 'sequences:read'"},
        )


# -- List --------------------------------------------------------------------------------


def test_list_pages_newest_first(stack: Stack) -> None:
    brand = _brand()
    made = [_create(stack, brand, name=f"n{i}").json() for i in range(5)]
    first = _list(stack, brand, "&page_size=2")
    assert first.status == 200
    page = first.json()
    assert list(page) == ["sequences", "next_page_token"]
    assert page["sequences"] == [made[4], made[3]]
    assert page["next_page_token"]
    second = _list(stack, brand, f"&page_size=2&page_token={page['next_page_token']}").json()
    assert second["sequences"] == [made[2], made[1]]
    last = _list(stack, brand, f"&page_size=2&page_token={second['next_page_token']}").json()
    assert last == {"sequences": [made[0]], "next_page_token": ""}


def test_list_of_an_empty_brand(stack: Stack) -> None:
    assert _list(stack, _brand()).json() == {"sequences": [], "next_page_token": ""}


def test_page_size_default_and_clamp(stack: Stack) -> None:
    brand = _brand()
    stub = _stub(stack)
    for i in range(120):
        stub.CreateSequence(pb.CreateSequenceRequest(brand_id=brand, name=f"n{i}"), timeout=10)
    default = _list(stack, brand).json()
    assert len(default["sequences"]) == 50 and default["next_page_token"]
    clamped = _list(stack, brand, "&page_size=500").json()
    assert len(clamped["sequences"]) == 100 and clamped["next_page_token"]
    rest = _list(stack, brand, f"&page_size=100&page_token={clamped['next_page_token']}").json()
    assert len(rest["sequences"]) == 20 and rest["next_page_token"] == ""


LIST_REFUSALS = {
    "no brand": ("", "brand_id: is required"),
    "negative size": ("brand_id=b&page_size=-1", "page_size: must be at least 0, got -1"),
    "size not a number": ("brand_id=b&page_size=ten", None),
    "garbage token": (
        "brand_id=b&page_token=abc",
        "page_token: is not a page token this service issued",
    ),
}


@pytest.mark.parametrize(("query", "message"), LIST_REFUSALS.values(), ids=LIST_REFUSALS.keys())
def test_list_refusals_are_422(stack: Stack, query: str, message: str | None) -> None:
    response = stack.envoy.request("GET", f"/v1/sequences?{query}")
    assert response.status == 422
    body = response.json()
    assert body["error"] == "validation_error"
    if message is None:
        assert body["message"].startswith("page_size: ")
    else:
        assert body["message"] == message


def test_tampered_and_foreign_tokens_are_refused(stack: Stack) -> None:
    brand, other = _brand(), _brand()
    for _ in range(3):
        _create(stack, brand)
    token = _list(stack, brand, "&page_size=1").json()["next_page_token"]
    payload, mac = token.split(".")
    tampered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + mac
    response = _list(stack, brand, f"&page_token={tampered}")
    assert (response.status, response.json()) == (
        422,
        {
            "error": "validation_error",
            "message": "page_token: is not a page token this service issued",
        },
    )
    response = _list(stack, other, f"&page_token={token}")
    assert (response.status, response.json()) == (
        422,
        {
            "error": "validation_error",
            "message": "page_token: was issued for another brand_id; list again without it",
        },
    )


def test_list_for_another_brand_is_403_to_a_brand_limited_token(stack: Stack) -> None:
    limited = stack.keys.token(brand_ids=["brand_a"])
    response = stack.envoy.request(
        "GET", "/v1/sequences?brand_id=brand_b", headers={"Authorization": f"Bearer {limited}"}
    )
    assert (response.status, response.json()) == (
        403,
        {"error": "permission_denied", "message": "the token may not act for brand 'brand_b'"},
    )


def _page_through(stub: Any, brand: str, size: int) -> list[str]:
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListSequences(
            pb.ListSequencesRequest(brand_id=brand, page_size=size, page_token=token), timeout=10
        )
        seen += [s.id for s in page.sequences]
        assert len(page.sequences) == size or not page.next_page_token
        token = page.next_page_token
        if not token:
            return seen


def test_every_page_size_sees_each_of_250_exactly_once(stack: Stack) -> None:
    brand = _brand()
    stub = _stub(stack)
    made = [
        stub.CreateSequence(pb.CreateSequenceRequest(brand_id=brand, name=f"n{i}"), timeout=10).id
        for i in range(250)
    ]
    newest_first = [
        s.id
        for s in _stub(stack)
        .ListSequences(pb.ListSequencesRequest(brand_id=brand, page_size=100), timeout=10)
        .sequences
    ]
    assert newest_first == made[::-1][:100]
    for size in range(1, 101):
        assert _page_through(stub, brand, size) == made[::-1], size


def test_ties_on_created_at_break_by_id(stack: Stack) -> None:
    """Rows stored in the same microsecond still page in one stable order."""
    brand = _brand()
    now = convert.utc_now()
    ids = sorted(convert.new_id() for _ in range(7))
    with stack.database.connection_context(), stack.database.atomic():
        for sequence_id in ids:
            store.insert_sequence(
                stack.database,
                {
                    "id": sequence_id,
                    "brand_id": brand,
                    "name": "tie",
                    "description": None,
                    "status": "draft",
                    "created_at": now,
                    "updated_at": now,
                },
                [],
            )
    for size in (1, 2, 3, 7):
        assert _page_through(_stub(stack), brand, size) == [str(i) for i in ids[::-1]]


def test_pages_stay_consistent_while_sequences_are_created(stack: Stack) -> None:
    brand = _brand()
    stub = _stub(stack)
    before = [
        stub.CreateSequence(pb.CreateSequenceRequest(brand_id=brand, name="old"), timeout=10).id
        for _ in range(30)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListSequences(
            pb.ListSequencesRequest(brand_id=brand, page_size=7, page_token=token), timeout=10
        )
        seen += [s.id for s in page.sequences]
        for _ in range(3):  # new ones arrive between pages
            stub.CreateSequence(pb.CreateSequenceRequest(brand_id=brand, name="new"), timeout=10)
        token = page.next_page_token
        if not token:
            break
    assert seen == before[::-1]


# -- Idempotency -------------------------------------------------------------------------


def _keyed(
    stack: Stack, brand: str, key: str, body: dict[str, Any] | None = None, token: str | None = None
) -> Response:
    headers: dict[str, str | None] = {"Idempotency-Key": key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return stack.envoy.post(body or valid_body() | {"brand_id": brand}, headers=headers)


def test_same_key_same_body_replays_the_original(stack: Stack) -> None:
    brand = _brand()
    first = _keyed(stack, brand, "key-1")
    before = stack.counts()
    again = _keyed(stack, brand, "key-1")
    assert (first.status, again.status) == (201, 201)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.json() == first.json()
    assert stack.counts() == before


def test_same_key_other_body_is_refused(stack: Stack) -> None:
    brand = _brand()
    assert _keyed(stack, brand, "key-2").status == 201
    before = stack.counts()
    response = _keyed(stack, brand, "key-2", valid_body() | {"brand_id": brand, "name": "other"})
    assert (response.status, response.json()) == (
        422,
        {
            "error": "idempotency_key_reused",
            "message": "the idempotency key 'key-2' was already used with a different request",
        },
    )
    assert stack.counts() == before


def test_keys_belong_to_the_caller_not_the_brand(stack: Stack) -> None:
    """Another caller's key of the same name is its own; the same caller's key is one key
    whatever the brand, so a create for another brand under it is a reused key."""
    brand, other_brand = _brand(), _brand()
    mine = _keyed(stack, brand, "shared")
    theirs = _keyed(stack, brand, "shared", token=stack.keys.token(sub="someone-else"))
    assert (mine.status, theirs.status) == (201, 201)
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    before = stack.counts()
    elsewhere = _keyed(stack, other_brand, "shared")
    assert (elsewhere.status, elsewhere.json()["error"]) == (422, "idempotency_key_reused")
    assert stack.counts() == before


def _alter_behind_the_service(stack: Stack, sequence_id: str) -> None:
    """Change the stored sequence and its steps directly, as later edits will."""
    with stack.database.connection_context():
        SequenceRow.update(name="renamed", updated_at=convert.utc_now()).where(
            SequenceRow.id == uuid.UUID(sequence_id)
        ).execute(stack.database)
        StepRow.update(template_key="changed").where(
            StepRow.sequence == uuid.UUID(sequence_id)
        ).execute(stack.database)
        StepRow.delete().where(
            StepRow.sequence == uuid.UUID(sequence_id), StepRow.position == 5
        ).execute(stack.database)


def test_replay_is_the_first_answer_byte_for_byte_after_the_sequence_changed(
    stack: Stack,
) -> None:
    brand = _brand()
    first = _keyed(stack, brand, f"frozen-{brand}")
    sequence_id = first.json()["id"]
    _alter_behind_the_service(stack, sequence_id)
    now = stack.envoy.request("GET", f"/v1/sequences/{sequence_id}").json()
    assert (now["name"], [s["template_key"] for s in now["steps"]]) == (
        "renamed",
        ["changed", "changed"],
    )
    before = stack.counts()
    again = _keyed(stack, brand, f"frozen-{brand}")
    assert (first.status, again.status) == (201, 201)
    assert again.body == first.body
    assert again.headers["location"] == first.headers["location"] == f"/v1/sequences/{sequence_id}"
    assert again.headers["content-type"] == "application/json"
    assert again.headers["idempotent-replayed"] == "true"
    assert stack.counts() == before


@pytest.mark.parametrize("route", ["direct", "envoy"])
def test_grpc_replay_sends_the_first_response_bytes_after_the_sequence_changed(
    stack: Stack, route: str
) -> None:
    brand = _brand()
    target = stack.grpc_target if route == "direct" else stack.envoy_target
    # No deserializer: the test sees the bytes on the wire.
    create = stack.channel(target).unary_unary(
        "/comms.v1.SequenceService/CreateSequence",
        request_serializer=pb.CreateSequenceRequest.SerializeToString,
    )
    request = json_format.ParseDict(
        valid_body() | {"brand_id": brand, "request_id": f"wire-{brand}"},
        pb.CreateSequenceRequest(),
    )
    first, first_call = create.with_call(request, timeout=10)
    sequence_id = pb.Sequence.FromString(first).id
    _alter_behind_the_service(stack, sequence_id)
    again, call = create.with_call(request, timeout=10)
    assert again == first
    assert ("idempotent-replayed", "true") not in first_call.initial_metadata()
    replayed = [
        (k, v) for k, v in call.initial_metadata() if k in {"location", "idempotent-replayed"}
    ]
    assert replayed == [
        ("location", f"/v1/sequences/{sequence_id}"),
        ("idempotent-replayed", "true"),
    ]


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        (
            {"Idempotency-Key": "k" * 256},
            {},
            "Idempotency-Key: must be at most 255 characters, got 256",
        ),
        ({}, {"request_id": "é"}, "request_id: must match the regular expression ^[ -~]*$"),
        (
            {"Idempotency-Key": "a"},
            {"request_id": "b"},
            "request_id: must equal the Idempotency-Key header when both are sent",
        ),
    ],
    ids=["too long", "not ascii", "header and field differ"],
)
def test_bad_keys_are_422(
    stack: Stack, headers: dict[str, str | None], body: dict[str, Any], message: str
) -> None:
    before = stack.counts()
    response = stack.envoy.post(valid_body() | body, headers=headers)
    assert (response.status, response.json()) == (
        422,
        {"error": "validation_error", "message": message},
    )
    assert stack.counts() == before


@pytest.mark.parametrize("route", ["direct", "envoy"])
def test_grpc_metadata_and_request_id_are_keys_too(stack: Stack, route: str) -> None:
    brand = _brand()
    stub = _stub(stack, route)
    # Keys are the caller's, and both routes share one stack: each run uses its own.
    request = pb.CreateSequenceRequest(brand_id=brand, name="n", request_id=f"rid-{route}")
    first = stub.CreateSequence(request, timeout=10)
    again, call = stub.CreateSequence.with_call(request, timeout=10)
    assert again == first
    assert ("idempotent-replayed", "true") in call.initial_metadata()
    by_header = pb.CreateSequenceRequest(brand_id=brand, name="n")
    metadata = [("idempotency-key", f"md-{route}")]
    one = stub.CreateSequence(by_header, timeout=10, metadata=metadata)
    two = stub.CreateSequence(by_header, timeout=10, metadata=metadata)
    assert one == two and one.id != first.id


def test_twenty_concurrent_creates_with_one_key_store_one(stack: Stack) -> None:
    brand = _brand()
    before = stack.counts()
    answers: list[Response] = []
    start = threading.Barrier(20)

    def create() -> None:
        start.wait()
        answers.append(_keyed(stack, brand, "burst"))

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status for a in answers) == [201] * 20
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 19
    assert stack.counts() == (before[0] + 1, before[1] + 3)


@pytest.mark.parametrize("store_name", ["sqlite", "postgres"])
def test_replay_survives_a_server_restart(
    store_name: str,
    keys: Keys,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> None:
    if store_name == "postgres":
        request.getfixturevalue("postgres_available")
    body = pb.CreateSequenceRequest(brand_id="b", name="n", request_id="restart-1")
    metadata = [("authorization", f"Bearer {keys.token()}")]
    answers = []
    with fresh_database_url(store_name, tmp_path_factory) as url:
        for _ in range(2):
            database = db.prepare(url)
            server = create_server("127.0.0.1:0", database, keys.verifier(), workers=2)
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.SequenceServiceStub(channel)
                answers.append(stub.CreateSequence.with_call(body, timeout=10, metadata=metadata))
            server.stop(1)
            database.close_all()
    (first, _), (again, call) = answers
    assert again == first
    assert ("idempotent-replayed", "true") in call.initial_metadata()


def test_expired_keys_are_forgotten(stack: Stack) -> None:
    brand = _brand()
    first = _keyed(stack, brand, "old-key").json()
    with stack.database.connection_context():
        IdempotencyRow.update(created_at=convert.utc_now() - dt.timedelta(hours=49)).where(
            IdempotencyRow.key == "old-key"
        ).execute(stack.database)
    again = _keyed(stack, brand, "old-key")
    assert again.status == 201 and "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first["id"]
