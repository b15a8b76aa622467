"""Every kind of bad token, refused the same way on every way in: HTTP through Envoy, gRPC
through Envoy, gRPC straight to the server. A refused call stores nothing."""

from __future__ import annotations

import datetime as dt
import http.client
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.integration.conftest import Stack
from tests.requests import valid_body, with_value, without
from tests.tokens import Keys

NOW = dt.datetime.now(dt.UTC)
ROUTES = ["http", "grpc-envoy", "grpc-direct"]
UNAUTHENTICATED, PERMISSION_DENIED = 401, 403
GRPC_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}
CHALLENGES = {
    401: 'Bearer realm="comms", error="invalid_token"',
    403: 'Bearer realm="comms", error="insufficient_scope"',
}

# name -> (Authorization header value made from the keys or None for none, status, message)
Header = Callable[[Keys], str | None]
REFUSED: dict[str, tuple[Header, int, str]] = {
    "no header": (
        lambda k: None,
        401,
        "missing bearer token: send 'Authorization: Bearer <token>'",
    ),
    "bearer garbage": (
        lambda k: "Bearer garbage.not.jwt",
        401,
        "malformed bearer token: not a JWT",
    ),
    "not bearer": (
        lambda k: "Basic dXNlcjpwYXNz",
        401,
        "malformed Authorization header: expected 'Bearer <token>'",
    ),
    "empty bearer": (
        lambda k: "Bearer ",
        401,
        "malformed Authorization header: expected 'Bearer <token>'",
    ),
    "signed by another key": (
        lambda k: f"Bearer {k.token('stranger')}",
        401,
        "token signature is invalid",
    ),
    "alg none": (
        lambda k: f"Bearer {k.unsigned_token()}",
        401,
        "token algorithm 'none' is not accepted: use RS256 or ES256",
    ),
    "hs256 keyed with the public key": (
        lambda k: f"Bearer {k.hs256_with_public_key()}",
        401,
        "token algorithm 'HS256' is not accepted: use RS256 or ES256",
    ),
    "expired": (
        lambda k: f"Bearer {k.token(exp=NOW - dt.timedelta(minutes=5))}",
        401,
        "token has expired",
    ),
    "not yet valid": (
        lambda k: f"Bearer {k.token(nbf=NOW + dt.timedelta(minutes=5))}",
        401,
        "token is not valid yet (nbf is in the future)",
    ),
    "wrong issuer": (
        lambda k: f"Bearer {k.token(iss='https://evil.test/')}",
        401,
        "wrong issuer: the token's issuer is not trusted",
    ),
    "wrong audience": (
        lambda k: f"Bearer {k.token(aud='another-api')}",
        401,
        "wrong audience: the token is not for 'comms-test'",
    ),
    "no expiry": (lambda k: f"Bearer {k.token(exp=None)}", 401, "token lacks the 'exp' claim"),
    "missing scope": (
        lambda k: f"Bearer {k.token(scope='sequences:read openid')}",
        403,
        "the token lacks the scope 'sequences:write'",
    ),
    "no scope claim": (
        lambda k: f"Bearer {k.token(scope=None)}",
        403,
        "the token lacks the scope 'sequences:write'",
    ),
    "scope as a prefix only": (
        lambda k: f"Bearer {k.token(scope='sequences:writer')}",
        403,
        "the token lacks the scope 'sequences:write'",
    ),
    "brand not allowed": (
        lambda k: f"Bearer {k.token(brand_ids=['brand_999'])}",
        403,
        "the token may not act for brand 'brand_123'",
    ),
}

ACCEPTED: dict[str, Header] = {
    "scope among others": lambda k: f"Bearer {k.token(scope='openid sequences:write profile')}",
    "brand allowed": lambda k: f"Bearer {k.token(brand_ids=['brand_0', 'brand_123'])}",
    "ES256": lambda k: f"Bearer {k.token('ec')}",
    "expired within the leeway": lambda k: f"Bearer {k.token(exp=NOW - dt.timedelta(seconds=5))}",
    "scheme in lower case": lambda k: f"bearer {k.token()}",
    # PyJWT reads base64url with its "=" padding too: the gateway's pre-check must let it by.
    "padded signature": lambda k: f"Bearer {k.token('ec')}==",
}


def _call(stack: Stack, route: str, authorization: str | None) -> tuple[int, Any]:
    """Create the valid sequence with this Authorization; (HTTP status, JSON body) or, over
    gRPC, (the matching HTTP status, (code, details, trailing metadata))."""
    if route == "http":
        response = stack.envoy.post(valid_body(), headers={"Authorization": authorization})
        if response.status in (401, 403):
            assert response.headers["www-authenticate"] == CHALLENGES[response.status]
        return response.status, response.json()
    target = stack.envoy_target if route == "grpc-envoy" else stack.grpc_target
    stub = pb_grpc.SequenceServiceStub(stack.channel(target, token=None))
    request = json_format.ParseDict(valid_body(), pb.CreateSequenceRequest())
    metadata = [] if authorization is None else [("authorization", authorization)]
    try:
        stub.CreateSequence(request, timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        failure: Any = error
        status = {v: k for k, v in GRPC_CODES.items()}[failure.code()]
        trailers = dict(failure.trailing_metadata() or ())
        return status, (failure.code(), failure.details(), trailers.get("www-authenticate"))
    return 201, None


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("header", "status", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refused(stack: Stack, route: str, header: Header, status: int, message: str) -> None:
    before = stack.counts()
    authorization = header(stack.keys)
    got_status, body = _call(stack, route, authorization)
    assert got_status == status
    if route == "http":
        error = "unauthenticated" if status == 401 else "permission_denied"
        assert body == {"error": error, "message": message}
    else:
        assert body == (GRPC_CODES[status], message, CHALLENGES[status])
    secret = (authorization or "").partition(" ")[2]
    if secret:  # the message never echoes the token
        assert secret not in json.dumps(body, default=str)
    assert stack.counts() == before


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("header", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(stack: Stack, route: str, header: Header) -> None:
    before = stack.counts()
    status, _ = _call(stack, route, header(stack.keys))
    assert status == 201
    assert stack.counts() == (before[0] + 1, before[1] + 3)


@pytest.mark.parametrize("route", ["grpc-envoy", "grpc-direct"])
def test_health_and_reflection_need_no_token(stack: Stack, route: str) -> None:
    target = stack.envoy_target if route == "grpc-envoy" else stack.grpc_target
    channel = stack.channel(target, token=None)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    listed = [s.name for a in answers for s in a.list_services_response.service]
    assert "comms.v1.SequenceService" in listed


# Requests the gateway itself refuses with 422 (the transcoder or comms.lua) once the token is
# past its pre-check: (method, path, raw body).
BAD_REQUESTS = {
    "malformed JSON": ("POST", "/v1/sequences", '{"brand_id": "b",'),
    "not an object": ("POST", "/v1/sequences", "[]"),
    "empty body": ("POST", "/v1/sequences", ""),
    "missing steps": ("POST", "/v1/sequences", json.dumps(without("steps"))),
    "wrong type": ("POST", "/v1/sequences", json.dumps(with_value("steps.0.position", "x"))),
    "bad query parameter": ("GET", "/v1/sequences?brand_id=b&page_size=ten", None),
    "a GET with a body": ("GET", "/v1/sequences?brand_id=b", "[]"),
}

# Authorization headers the server can never accept (the gateway's pre-check) and its words.
SURELY_REFUSED: dict[str, tuple[list[str], str]] = {
    "no header": ([], "missing bearer token: send 'Authorization: Bearer <token>'"),
    "not bearer": (
        ["Basic dXNlcjpwYXNz"],
        "malformed Authorization header: expected 'Bearer <token>'",
    ),
    # HTTP/1 joins them into one "Bearer a.b.c,Bearer a.b.c", which the server reads so.
    "two headers": (["Bearer a.b.c", "Bearer a.b.c"], "malformed bearer token: not a JWT"),
    "not three parts": (["Bearer garbage"], "malformed bearer token: not a JWT"),
}


def _raw(stack: Stack, method: str, path: str, body: str | None, authorizations: list[str]) -> Any:
    """Send a request with exactly these Authorization headers (none, one or several)."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.envoy.settings.http_port, timeout=10)
    try:
        connection.putrequest(method, path)
        for value in authorizations:
            connection.putheader("Authorization", value)
        if body is not None:
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", str(len(body.encode())))
        connection.endheaders(body.encode() if body is not None else None)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


@pytest.mark.parametrize(("authorizations", "message"), SURELY_REFUSED.values(), ids=SURELY_REFUSED)
@pytest.mark.parametrize(("method", "path", "body"), BAD_REQUESTS.values(), ids=BAD_REQUESTS)
def test_401_comes_before_422(
    stack: Stack, method: str, path: str, body: str | None, authorizations: list[str], message: str
) -> None:
    before = stack.counts()
    status, headers, answer = _raw(stack, method, path, body, authorizations)
    assert (status, headers["content-type"], headers["www-authenticate"]) == (
        401,
        "application/json",
        CHALLENGES[401],
    )
    assert json.loads(answer) == {"error": "unauthenticated", "message": message}
    assert stack.counts() == before


@pytest.mark.parametrize(("method", "path", "body"), BAD_REQUESTS.values(), ids=BAD_REQUESTS)
def test_with_a_good_token_the_same_requests_are_422(
    stack: Stack, method: str, path: str, body: str | None
) -> None:
    before = stack.counts()
    status, headers, answer = _raw(stack, method, path, body, [f"Bearer {stack.keys.token()}"])
    assert (status, headers["content-type"]) == (422, "application/json")
    assert json.loads(answer)["error"] == "validation_error"
    assert stack.counts() == before


def test_a_well_formed_but_expired_token_is_judged_after_the_body(stack: Stack) -> None:
    """What the gateway cannot know without verifying: the body's 422 comes first."""
    expired = stack.keys.token(exp=NOW - dt.timedelta(minutes=5))
    before = stack.counts()
    status, _, answer = _raw(stack, "POST", "/v1/sequences", "[]", [f"Bearer {expired}"])
    assert (status, json.loads(answer)) == (
        422,
        {"error": "validation_error", "message": "body: must be a JSON object"},
    )
    assert stack.counts() == before
