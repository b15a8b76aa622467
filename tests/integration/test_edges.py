"""The request's edges, through the real Envoy: header sizes, bytes that are not UTF-8 in
the path or query, and bodies that are not JSON or are too large."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from comms.gateway import MAX_HEADERS_COUNT, MAX_HEADERS_KIB
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.integration.conftest import Response, Stack
from tests.requests import valid_body, with_value

TOKEN_LIMIT = 16 * 1024  # the largest token the README promises


def _error(response: Response, status: int) -> dict[str, str]:
    assert response.status == status, (response.status, response.body[:300])
    body = response.json()
    assert list(body) == ["error", "message"], body
    return body  # type: ignore[no-any-return]


def _largest_token(stack: Stack) -> str:
    """A valid token just under TOKEN_LIMIT characters, made big by its brand_ids: each
    "bNNNNN", adds 9 bytes of JSON, 12 characters of base64url (give or take padding)."""
    brands = ["brand_123"]
    while (more := (TOKEN_LIMIT - 4 - len(token := stack.keys.token(brand_ids=brands))) // 12) > 0:
        brands += [f"b{len(brands) + i:05d}" for i in range(more)]
    return token


def test_a_16_kib_token_works_every_time_over_http(stack: Stack) -> None:
    token = _largest_token(stack)
    assert TOKEN_LIMIT - 32 < len(token) <= TOKEN_LIMIT
    statuses = [
        stack.envoy.request(
            "GET", "/v1/sequences?brand_id=brand_123", headers={"Authorization": f"Bearer {token}"}
        ).status
        for _ in range(20)
    ]
    assert statuses == [200] * 20


@pytest.mark.parametrize("route", ["direct", "envoy"])
def test_a_16_kib_token_works_every_time_over_grpc(stack: Stack, route: str) -> None:
    target = stack.grpc_target if route == "direct" else stack.envoy_target
    stub = pb_grpc.SequenceServiceStub(stack.channel(target, _largest_token(stack)))
    codes = [
        stub.ListSequences.with_call(pb.ListSequencesRequest(brand_id="brand_123"), timeout=10)[
            1
        ].code()
        for _ in range(20)
    ]
    assert codes == [grpc.StatusCode.OK] * 20


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        pytest.param({"X-Big": "x" * MAX_HEADERS_KIB * 1024}, "", id="one header"),
        pytest.param({}, "&page_token=" + "a" * MAX_HEADERS_KIB * 1024, id="query string"),
        pytest.param({f"X-H{i}": "1" for i in range(MAX_HEADERS_COUNT)}, "", id="header count"),
    ],
)
def test_headers_over_the_limit_are_431(
    stack: Stack, headers: dict[str, str | None], query: str
) -> None:
    response = stack.envoy.request("GET", f"/v1/sequences?brand_id=brand_123{query}", None, headers)
    assert _error(response, 431) == {
        "error": "headers_too_large",
        "message": "request headers are too large",
    }


def test_a_query_string_just_within_the_limit_reaches_the_server(stack: Stack) -> None:
    """The gRPC server sees the path twice (x-envoy-original-path) and Envoy's own headers:
    its metadata limit must still be far off, and its text (header sizes) never shown."""
    token = "a" * (MAX_HEADERS_KIB * 1024 - 2048)
    response = stack.envoy.request("GET", f"/v1/sequences?brand_id=brand_123&page_token={token}")
    assert _error(response, 422) == {
        "error": "validation_error",
        "message": "page_token: is not a page token this service issued",
    }


NOT_UTF8 = {
    "path": ("/v1/sequences/%FF", "id"),
    "path, cut short": ("/v1/sequences/caf%C3", "id"),
    "query": ("/v1/sequences?brand_id=%FF", "brand_id"),
    "query, second parameter": ("/v1/sequences?brand_id=b&page_token=%E2%82", "page_token"),
}


@pytest.mark.parametrize(("path", "field"), NOT_UTF8.values(), ids=NOT_UTF8.keys())
def test_bytes_that_are_not_utf8_are_422_naming_the_field(
    stack: Stack, path: str, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = stack.envoy.request("GET", path)
    assert _error(response, 422) == {
        "error": "validation_error",
        "message": f"{field}: must be valid UTF-8",
    }
    assert [
        r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR
    ] == []


def test_bytes_that_are_not_utf8_still_need_a_token(stack: Stack) -> None:
    response = stack.envoy.request("GET", "/v1/sequences/%FF", headers={"Authorization": None})
    assert _error(response, 401)["error"] == "unauthenticated"


def test_valid_utf8_in_the_path_is_an_ordinary_id(stack: Stack) -> None:
    response = stack.envoy.request("GET", "/v1/sequences/caf%C3%A9")
    assert _error(response, 404) == {"error": "not_found", "message": "sequence 'café' not found"}


@pytest.mark.parametrize("route", ["direct", "envoy"])
def test_native_grpc_strings_that_are_not_utf8_are_invalid_argument(
    stack: Stack, route: str
) -> None:
    """A client that serializes by hand can send any bytes; the create stores nothing."""
    target = stack.grpc_target if route == "direct" else stack.envoy_target
    create = stack.channel(target).unary_unary(
        "/comms.v1.SequenceService/CreateSequence",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    request = pb.CreateSequenceRequest(
        brand_id="brand_123",
        name="n",
        steps=[pb.Step(template_key="ok"), pb.Step(template_key="é")],
    )
    raw = request.SerializeToString().replace("é".encode(), b"\xff\xfe")
    before = stack.counts()
    with pytest.raises(grpc.RpcError) as refused:
        create(raw, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "steps[1].template_key: must be valid UTF-8"
    assert stack.counts() == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", "text/json"],
)
def test_bodies_that_are_not_json_are_415(stack: Stack, content_type: str) -> None:
    before = stack.counts()
    response = stack.envoy.post(valid_body(), headers={"Content-Type": content_type})
    assert _error(response, 415) == {
        "error": "unsupported_media_type",
        "message": f"Content-Type {content_type} is not supported: send application/json",
    }
    assert stack.counts() == before


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON", "application/json; charset=utf-8", None],
    ids=["plain", "upper case", "charset", "none"],
)
def test_json_bodies_are_read(stack: Stack, content_type: str | None) -> None:
    """No Content-Type at all reads as JSON, so that a POST with no body can be {}."""
    response = stack.envoy.post(valid_body(), headers={"Content-Type": content_type})
    assert response.status == 201, response.body[:300]


def test_a_post_without_body_or_content_type_is_not_415(stack: Stack) -> None:
    response = stack.envoy.request("POST", "/v1/sequences", headers={"Content-Length": "0"})
    assert _error(response, 422) == {
        "error": "validation_error",
        "message": "body: must be a JSON object",
    }


def test_the_media_type_rule_leaves_other_methods_to_405(stack: Stack) -> None:
    response = stack.envoy.request("PUT", "/v1/sequences", "x", {"Content-Type": "text/plain"})
    assert _error(response, 405)["error"] == "method_not_allowed"


def test_the_query_is_percent_decoded_once(stack: Stack) -> None:
    """%25FF is the text %FF, valid UTF-8: an ordinary brand with no sequences."""
    brand = urllib.parse.quote("%FF")
    response = stack.envoy.request("GET", f"/v1/sequences?brand_id={brand}")
    assert (response.status, response.json()) == (200, {"sequences": [], "next_page_token": ""})


def _urlopen(stack: Stack, body: bytes | Iterator[bytes]) -> tuple[int, bytes]:
    """POST as a plain urllib client does: the whole body first, then read the answer (no
    Expect: 100-continue). An iterator is sent chunked, without Content-Length."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.envoy.settings.http_port}/v1/sequences",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": stack.envoy.default_headers["Authorization"] or "",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        assert error.headers["Content-Type"] == "application/json"
        return error.code, error.read()


TOO_LARGE = (
    413,
    b'{"error":"payload_too_large","message":"request body is larger than 1048576 bytes"}\n',
)


@pytest.mark.parametrize("megabytes", [2, 10, 40])
def test_a_body_over_the_limit_gets_a_413_the_client_can_read(stack: Stack, megabytes: int) -> None:
    before = stack.counts()
    body = json.dumps(with_value("description", "d" * megabytes * 1024 * 1024)).encode()
    assert _urlopen(stack, body) == TOO_LARGE
    assert stack.counts() == before


def test_a_chunked_body_just_over_the_limit_gets_a_413_the_client_can_read(stack: Stack) -> None:
    """Without Content-Length the size shows only as the body comes: the 413 is sent at the
    limit, and a client still sending a lot more then meets a reset (README, Limits)."""
    body = json.dumps(with_value("description", "d" * 1536 * 1024)).encode()
    chunks = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    assert _urlopen(stack, chunks) == TOO_LARGE


def test_a_body_within_the_limit_still_reaches_the_server(stack: Stack) -> None:
    body = json.dumps(with_value("description", "d" * 1000 * 1024)).encode()
    assert len(body) <= 1024 * 1024
    status, answer = _urlopen(stack, body)
    assert (status, json.loads(answer)["message"]) == (
        422,
        "description: must be at most 10000 characters, got 1024000",
    )
