"""The request's edges, through the real Envoy: header sizes."""

from __future__ import annotations

import grpc
import pytest

from comms.gateway import MAX_HEADERS_COUNT, MAX_HEADERS_KIB
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.integration.conftest import Response, Stack

TOKEN_LIMIT = 16 * 1024  # the largest token the README promises


def _error(response: Response, status: int) -> dict[str, str]:
    assert response.status == status, (response.status, response.body[:300])
    body = response.json()
    assert list(body) == ["error", "message"], body
    return body  # type: ignore[no-any-return]


def _largest_token(stack: Stack) -> str:
    """A valid token of at most TOKEN_LIMIT characters, made big by its brand_ids."""
    brands = ["brand_123"]
    token = stack.keys.token(brand_ids=brands)
    while True:
        # Each "bNNNNN", adds 9 JSON bytes, 12 in base64url.
        more = (TOKEN_LIMIT - len(token)) // 12
        if more < 1:
            return token
        brands += [f"b{len(brands) + i:05d}" for i in range(more)]
        token = stack.keys.token(brand_ids=brands)
        if len(token) > TOKEN_LIMIT:
            brands = brands[:-more]
            return stack.keys.token(brand_ids=brands)


def test_a_16_kib_token_works_every_time_over_http(stack: Stack) -> None:
    token = _largest_token(stack)
    assert TOKEN_LIMIT - 12 < len(token) <= TOKEN_LIMIT
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
