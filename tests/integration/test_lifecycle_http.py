"""The life of a sequence over HTTP, through a real Envoy, on each store: every method's status
and body, ETag and If-Match, the 409 and 412 bodies, a POST with no body at all."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import SEQUENCE_KEYS
from tests.integration.conftest import Response, Stack
from tests.requests import valid_body

JSON = {"Content-Type": "application/json"}
STEP = {"position": 0, "channel": "sms", "template_key": "k", "delay_minutes": 0}


def _brand() -> str:
    return f"brand_{uuid.uuid4().hex[:12]}"


def _create(stack: Stack, **fields: Any) -> dict[str, Any]:
    response = stack.envoy.post(valid_body() | {"brand_id": _brand()} | fields)
    assert response.status == 201, response.body
    body: dict[str, Any] = response.json()
    return body


def _ok(response: Response) -> dict[str, Any]:
    assert response.status == 200, (response.status, response.body)
    body: dict[str, Any] = response.json()
    return body


def _error(response: Response, status: int, error: str, message: str) -> None:
    assert (response.status, response.json()) == (status, {"error": error, "message": message})


def _move(
    stack: Stack, sequence_id: str, verb: str, body: Any = None, **headers: str | None
) -> Response:
    sent = json.dumps(body) if body is not None else None
    if sent is not None:
        headers = {"Content-Type": "application/json"} | headers
    return stack.envoy.request("POST", f"/v1/sequences/{sequence_id}:{verb}", sent, headers)


def _patch(
    stack: Stack, sequence_id: str, body: Any, mask: str | None = None, **headers: str | None
) -> Response:
    query = f"?update_mask={quote(mask)}" if mask is not None else ""
    return stack.envoy.request(
        "PATCH", f"/v1/sequences/{sequence_id}{query}", json.dumps(body), JSON | headers
    )


def _get(stack: Stack, path: str) -> Response:
    return stack.envoy.request("GET", path)


def test_the_walk_over_http(stack: Stack) -> None:
    created = _create(stack)
    sequence_id = created["id"]
    assert list(created) == SEQUENCE_KEYS
    assert (created["revision"], created["deleted_at"]) == (0, None)

    edited = _ok(_patch(stack, sequence_id, {"name": "Renamed"}, "name"))
    assert list(edited) == SEQUENCE_KEYS
    assert (edited["name"], edited["status"]) == ("Renamed", "draft")
    active = _ok(_move(stack, sequence_id, "activate"))  # no body, no Content-Type
    assert (active["status"], active["revision"]) == ("active", 1)
    paused = _ok(_move(stack, sequence_id, "pause", {}))
    assert paused["status"] == "paused"
    changed = _ok(_patch(stack, sequence_id, {"steps": [STEP]}))  # no mask: what the body holds
    assert [s["template_key"] for s in changed["steps"]] == ["k"]
    resumed = _ok(_move(stack, sequence_id, "resume", {"etag": changed["etag"]}))
    assert (resumed["status"], resumed["revision"]) == ("active", 2)
    archived = _ok(_move(stack, sequence_id, "archive", {}))
    assert archived["status"] == "archived"
    deleted = _ok(stack.envoy.request("DELETE", f"/v1/sequences/{sequence_id}"))
    assert (deleted["status"], deleted["deleted_at"]) == ("archived", deleted["updated_at"])
    restored = _ok(_move(stack, sequence_id, "undelete", {}))
    assert restored["deleted_at"] is None

    answers = [created, edited, active, paused, changed, resumed, archived, deleted, restored]
    assert len({a["etag"] for a in answers}) == len(answers)
    stamps = [a["updated_at"] for a in answers]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert {a["created_at"] for a in answers} == {created["created_at"]}
    assert _ok(_get(stack, f"/v1/sequences/{sequence_id}")) == restored

    revisions = _ok(_get(stack, f"/v1/sequences/{sequence_id}/revisions"))
    assert list(revisions) == ["revisions", "next_page_token"]
    assert revisions["next_page_token"] == ""
    assert [(r["revision"], r["name"], len(r["steps"])) for r in revisions["revisions"]] == [
        (2, "Renamed", 1),
        (1, "Renamed", 3),
    ]
    first = _ok(_get(stack, f"/v1/sequences/{sequence_id}/revisions/1"))
    assert first == revisions["revisions"][1]
    assert list(first) == [
        "revision",
        "sequence_id",
        "created_at",
        "created_by",
        "name",
        "description",
        "steps",
    ]
    assert (first["sequence_id"], first["created_by"], first["created_at"]) == (
        sequence_id,
        "tester",
        active["updated_at"],
    )
    row, steps = stack.stored(sequence_id)
    assert (row["status"], row["etag"], row["revision"], row["deleted_at"]) == (
        "archived",
        restored["etag"],
        2,
        None,
    )
    assert [s["template_key"] for s in steps] == ["k"]


def test_get_sends_the_etag_that_if_match_takes(stack: Stack) -> None:
    created = _create(stack)
    fetched = _get(stack, f"/v1/sequences/{created['id']}")
    assert fetched.headers["etag"] == f'"{created["etag"]}"'
    for if_match in (fetched.headers["etag"], "*"):
        answer = _ok(_move(stack, created["id"], "activate", {}, **{"If-Match": if_match}))
        assert answer["status"] == "active"
        _ok(_move(stack, created["id"], "pause", {}, **{"If-Match": answer["etag"]}))
        _ok(_move(stack, created["id"], "archive", {}))
        created = _create(stack)
        fetched = _get(stack, f"/v1/sequences/{created['id']}")


def test_a_stale_etag_is_412_and_changes_nothing(stack: Stack) -> None:
    created = _create(stack)
    stale = created["etag"]
    current = _ok(_patch(stack, created["id"], {"name": "new"}, "name"))
    message = f"etag {stale!r} is not the sequence's current etag: it changed since; read it again"
    for response in (
        _move(stack, created["id"], "activate", {"etag": stale}),
        _move(stack, created["id"], "activate", {}, **{"If-Match": f'"{stale}"'}),
        _patch(stack, created["id"], {"name": "x", "etag": stale}, "name"),
        _patch(stack, created["id"], {"name": "x"}, "name", **{"If-Match": stale}),
        stack.envoy.request("DELETE", f"/v1/sequences/{created['id']}?etag={stale}"),
    ):
        _error(response, 412, "etag_mismatch", message)
    assert _ok(_get(stack, f"/v1/sequences/{created['id']}")) == current


@pytest.mark.parametrize(
    ("moves", "verb", "message"),
    [
        (
            [],
            "pause",
            "cannot pause a sequence that is draft; it allows: activate, archive, edit, delete",
        ),
        (
            ["activate"],
            "activate",
            "cannot activate a sequence that is active; it allows: pause, archive",
        ),
        (["archive"], "resume", "cannot resume a sequence that is archived; it allows: delete"),
        (
            ["archive", "delete"],
            "archive",
            "cannot archive a sequence that is deleted (status archived); it allows: undelete",
        ),
    ],
)
def test_a_refused_move_is_409(stack: Stack, moves: list[str], verb: str, message: str) -> None:
    created = _create(stack)
    for move in moves:
        if move == "delete":
            _ok(stack.envoy.request("DELETE", f"/v1/sequences/{created['id']}"))
        else:
            _ok(_move(stack, created["id"], move, {}))
    before = stack.stored(created["id"])
    _error(_move(stack, created["id"], verb, {}), 409, "failed_precondition", message)
    assert stack.stored(created["id"]) == before


def test_refused_edits_and_deletes_are_409(stack: Stack) -> None:
    created = _create(stack)
    _ok(_move(stack, created["id"], "activate"))
    _error(
        _patch(stack, created["id"], {"name": "x"}, "name"),
        409,
        "failed_precondition",
        "cannot edit a sequence that is active; it allows: pause, archive",
    )
    _error(
        stack.envoy.request("DELETE", f"/v1/sequences/{created['id']}"),
        409,
        "failed_precondition",
        "cannot delete a sequence that is active; it allows: pause, archive",
    )
    _error(
        _move(stack, created["id"], "undelete"),
        409,
        "failed_precondition",
        "cannot undelete a sequence that is active; it allows: pause, archive",
    )


def test_update_rules_are_422_naming_the_field(stack: Stack) -> None:
    created = _create(stack)
    before = stack.stored(created["id"])
    for response, message in (
        (_patch(stack, created["id"], {"name": ""}, "name"), "name: is required"),
        (
            _patch(stack, created["id"], {}, "status"),
            "update_mask: may name only name, description, steps, got 'status'",
        ),
        (
            _patch(stack, created["id"], {"steps": [STEP, STEP]}, "steps"),
            "steps: positions must be unique within the sequence",
        ),
        (
            _patch(stack, created["id"], {"description": 5}, "description"),
            "description: must be a string or null",
        ),
    ):
        _error(response, 422, "validation_error", message)
    assert stack.stored(created["id"]) == before


def test_clearing_the_steps_needs_the_mask_and_then_activate_is_422(stack: Stack) -> None:
    created = _create(stack)
    unchanged = _ok(_patch(stack, created["id"], {"steps": []}))
    assert (len(unchanged["steps"]), unchanged["etag"]) == (3, created["etag"])
    cleared = _ok(_patch(stack, created["id"], {"steps": []}, "steps"))
    assert cleared["steps"] == []
    _error(
        _move(stack, created["id"], "activate"),
        422,
        "validation_error",
        "steps: must have at least 1 step to activate the sequence",
    )


def test_the_moves_need_the_publish_scope(stack: Stack) -> None:
    created = _create(stack)
    token = stack.keys.token(scope="sequences:read sequences:write")
    for verb in ("activate", "pause", "resume", "archive"):
        response = _move(stack, created["id"], verb, {}, Authorization=f"Bearer {token}")
        assert response.status == 403
        assert response.json() == {
            "error": "permission_denied",
            "message": "the token lacks the scope 'sequences:publish'",
        }


def test_unknown_sequences_and_revisions_are_404(stack: Stack) -> None:
    unknown = str(uuid.uuid4())
    _error(_move(stack, unknown, "activate"), 404, "not_found", f"sequence {unknown!r} not found")
    created = _create(stack)
    _error(
        _get(stack, f"/v1/sequences/{created['id']}/revisions/1"),
        404,
        "not_found",
        f"revision 1 of sequence {created['id']!r} not found",
    )


def test_list_filters_by_status_and_deleted(stack: Stack) -> None:
    brand = _brand()
    draft = _create(stack, brand_id=brand)
    active = _create(stack, brand_id=brand)
    _ok(_move(stack, active["id"], "activate"))
    gone = _create(stack, brand_id=brand)
    _ok(stack.envoy.request("DELETE", f"/v1/sequences/{gone['id']}"))

    def listed(query: str) -> list[str]:
        answer = _ok(_get(stack, f"/v1/sequences?brand_id={brand}{query}"))
        return [s["id"] for s in answer["sequences"]]

    assert listed("") == [active["id"], draft["id"]]
    assert listed("&show_deleted=true") == [gone["id"], active["id"], draft["id"]]
    assert listed("&status=active&status=paused") == [active["id"]]
    assert listed("&status=draft&show_deleted=true") == [gone["id"], draft["id"]]
    response = _get(stack, f"/v1/sequences?brand_id={brand}&status=draft&status=live")
    assert (response.status, response.json()) == (
        422,
        {
            "error": "validation_error",
            "message": 'status: must be one of draft, active, paused, archived (got "live")',
        },
    )
    response = _get(stack, f"/v1/sequences?brand_id={brand}&show_deleted=maybe")
    assert (response.status, response.json()) == (
        422,
        {
            "error": "validation_error",
            "message": 'show_deleted: must be true or false (got "maybe")',
        },
    )


def test_a_retried_move_replays_its_first_answer(stack: Stack) -> None:
    created = _create(stack)
    key = {"Idempotency-Key": f"activate-{created['id']}"}
    first = _move(stack, created["id"], "activate", {}, **key)
    assert first.status == 200 and "idempotent-replayed" not in first.headers
    _ok(_move(stack, created["id"], "pause", {}))  # the sequence changes since
    again = _move(stack, created["id"], "activate", {}, **key)
    assert (again.status, again.body, again.headers["idempotent-replayed"]) == (
        200,
        first.body,
        "true",
    )
    assert _ok(_get(stack, f"/v1/sequences/{created['id']}"))["status"] == "paused"
    # The same key for another method, or another body, is refused.
    for response in (
        _move(stack, created["id"], "resume", {}, **key),
        _move(stack, created["id"], "activate", {"etag": "x"}, **key),
    ):
        _error(
            response,
            422,
            "idempotency_key_reused",
            f"the idempotency key {key['Idempotency-Key']!r} was already used with a different"
            " request",
        )


def test_a_retried_edit_replays_its_first_answer(stack: Stack) -> None:
    created = _create(stack)
    key = {"Idempotency-Key": f"edit-{created['id']}"}
    first = _patch(stack, created["id"], {"name": "once"}, "name", **key)
    assert first.status == 200
    _ok(_patch(stack, created["id"], {"name": "twice"}, "name"))
    again = _patch(stack, created["id"], {"name": "once"}, "name", **key)
    assert (again.body, again.headers["idempotent-replayed"]) == (first.body, "true")
    assert _ok(_get(stack, f"/v1/sequences/{created['id']}"))["name"] == "twice"


def test_unknown_and_empty_named_members_are_ignored(stack: Stack) -> None:
    created = _create(stack)
    edited = _ok(
        _patch(
            stack,
            created["id"],
            {"name": "n", "": {}, "colour": "blue", "steps": [STEP | {"": 1}]},
            "name,steps",
        )
    )
    assert (edited["name"], [s["template_key"] for s in edited["steps"]]) == ("n", ["k"])
    active = _ok(_move(stack, created["id"], "activate", {"": [1], "colour": "blue"}))
    assert active["status"] == "active"


@pytest.mark.parametrize("key", ['"id"', '"i\\u0064"'])  # as sent, and \u-escaped
@pytest.mark.parametrize("value", ["the other's id", "{}", "5"])
def test_an_id_in_the_body_never_overrides_the_path(stack: Stack, key: str, value: str) -> None:
    """The transcoder would let a body's id win over the path's: the gateway drops it."""
    target, other = _create(stack), _create(stack)
    sent = json.dumps(other["id"]) if value == "the other's id" else value
    path = f"/v1/sequences/{target['id']}"
    edit = f'{{"name": "edited", {key}: {sent}}}'
    edited = _ok(stack.envoy.request("PATCH", path, edit, JSON))
    assert (edited["id"], edited["name"]) == (target["id"], "edited")
    active = _ok(stack.envoy.request("POST", path + ":activate", f"{{{key}: {sent}}}", JSON))
    assert (active["id"], active["status"]) == (target["id"], "active")
    untouched = _ok(_get(stack, f"/v1/sequences/{other['id']}"))
    assert (untouched["name"], untouched["status"]) == (other["name"], "draft")


def test_a_list_for_a_one_value_field_is_422_naming_it(stack: Stack) -> None:
    created = _create(stack)
    _error(
        _patch(stack, created["id"], {"name": ["x"]}, "name"),
        422,
        "validation_error",
        "name: must be a string (got a list)",
    )
    _error(
        _move(stack, created["id"], "activate", {"etag": ["x"]}),
        422,
        "validation_error",
        "etag: must be a string (got a list)",
    )
