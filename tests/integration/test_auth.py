"""Every kind of bad token, refused the same way on every way in: HTTP through Envoy, gRPC
through Envoy, gRPC straight to the server. A refused call stores nothing."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from comms.auth import TokenVerifier
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.conftest import fresh_database_url
from tests.integration.conftest import Stack, running_stack
from tests.requests import valid_body, with_value, without
from tests.tokens import AUDIENCE, ISSUER, Keys


def now() -> dt.datetime:
    """Read when a token is made, not at import: a module's tests can run minutes later."""
    return dt.datetime.now(dt.UTC)


ROUTES = ["http", "grpc-envoy", "grpc-direct"]
UNAUTHENTICATED, PERMISSION_DENIED = 401, 403
GRPC_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}
CHALLENGES = {
    401: 'Bearer realm="comms", error="invalid_token"',
    403: 'Bearer realm="comms", error="insufficient_scope"',
}

# name -> (Authorization header value made from the keys or None for none, status, message)
Header = Callable[[Keys], str | None]
RS256 = {"alg": "RS256", "kid": "rsa-1"}
TIME_RULE = "must be an integer number of seconds from 0 to 253402300799"


def signed(**claims: Any) -> Header:
    """A good RSA token but for these claims (None leaves one out)."""
    return lambda k: f"Bearer {k.token(**claims)}"


def forged(header: Any, **claims: Any) -> Header:
    """A token of exactly this header, good claims but these (None: JSON null), RSA-signed."""
    return lambda k: f"Bearer {k.forged(header, k.claims() | claims)}"


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
        lambda k: f"Bearer {k.token(exp=now() - dt.timedelta(minutes=5))}",
        401,
        "token has expired",
    ),
    "not yet valid": (
        lambda k: f"Bearer {k.token(nbf=now() + dt.timedelta(minutes=5))}",
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
    # The header: every parameter of the type RFC 7515 gives it, no extension we don't know.
    "header not an object": (forged([RS256]), 401, "malformed bearer token: not a JWT"),
    "kid not a string": (
        forged({"alg": "RS256", "kid": 1}),
        401,
        "malformed bearer token: the header's 'kid' must be a string",
    ),
    "alg not a string": (
        forged({"alg": ["RS256"], "kid": "rsa-1"}),
        401,
        "malformed bearer token: the header's 'alg' must be a string",
    ),
    "typ not a string": (
        forged(RS256 | {"typ": {"JWT": True}}),
        401,
        "malformed bearer token: the header's 'typ' must be a string",
    ),
    "critical extension": (
        forged(RS256 | {"crit": ["zz"], "zz": 1}),
        401,
        "malformed bearer token: the header's 'crit' names extensions this service does not support",
    ),
    "long unknown alg, shortened": (
        forged({"alg": "X" * 2000, "kid": "rsa-1"}),
        401,
        "token algorithm 'XXXXXXXXXXXXXXXXXXXX...' is not accepted: use RS256 or ES256",
    ),
    # The subject scopes idempotency keys: every token must name its own.
    "no sub": (signed(sub=None), 401, "token lacks the 'sub' claim"),
    "sub null": (forged(RS256, sub=None), 401, "token lacks the 'sub' claim"),
    "empty sub": (
        signed(sub=""),
        401,
        "the 'sub' claim must be a non-empty string",
    ),
    "sub not a string": (forged(RS256, sub=42), 401, "the 'sub' claim must be a non-empty string"),
    "brand_ids null": (
        forged(RS256, brand_ids=None),
        401,
        "the 'brand_ids' claim must be a list of strings",
    ),
    "brand_ids a string": (
        forged(RS256, brand_ids="brand_123"),
        401,
        "the 'brand_ids' claim must be a list of strings",
    ),
    "scope split on a no-break space": (
        signed(scope="openid\u00a0sequences:write"),
        403,
        "the token lacks the scope 'sequences:write'",
    ),
    "scope split on a tab": (
        signed(scope="openid\tsequences:write"),
        403,
        "the token lacks the scope 'sequences:write'",
    ),
    # NumericDate: whole seconds, in range; never a string, a bool, a fraction or 1e308.
    "exp as a string": (forged(RS256, exp="4102444800"), 401, f"the 'exp' claim {TIME_RULE}"),
    "exp 1e308": (forged(RS256, exp=1e308), 401, f"the 'exp' claim {TIME_RULE}"),
    "exp true": (forged(RS256, exp=True), 401, f"the 'exp' claim {TIME_RULE}"),
    "exp with a fraction": (forged(RS256, exp=4102444800.5), 401, f"the 'exp' claim {TIME_RULE}"),
    "exp past year 9999": (forged(RS256, exp=253402300800), 401, f"the 'exp' claim {TIME_RULE}"),
    "nbf as a string": (forged(RS256, nbf="0"), 401, f"the 'nbf' claim {TIME_RULE}"),
    "iat negative": (forged(RS256, iat=-1), 401, f"the 'iat' claim {TIME_RULE}"),
    "iat in the future": (
        lambda k: f"Bearer {k.token(iat=now() + dt.timedelta(minutes=5))}",
        401,
        "token is not valid yet (iat is in the future)",
    ),
}

ACCEPTED: dict[str, Header] = {
    "scope among others": lambda k: f"Bearer {k.token(scope='openid sequences:write profile')}",
    "brand allowed": lambda k: f"Bearer {k.token(brand_ids=['brand_0', 'brand_123'])}",
    "ES256": lambda k: f"Bearer {k.token('ec')}",
    "expired within the leeway": lambda k: f"Bearer {k.token(exp=now() - dt.timedelta(seconds=5))}",
    "scheme in lower case": lambda k: f"bearer {k.token()}",
    # PyJWT reads base64url with its "=" padding too: the gateway's pre-check must let it by.
    "padded signature": lambda k: f"Bearer {k.token('ec')}==",
    "scopes apart by several spaces": signed(scope="openid  sequences:write "),
    "typ at+jwt (RFC 9068)": forged(RS256 | {"typ": "at+jwt"}),
    "exp at the last second of year 9999": forged(RS256, exp=253402300799),
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
    expired = stack.keys.token(exp=now() - dt.timedelta(minutes=5))
    before = stack.counts()
    status, _, answer = _raw(stack, "POST", "/v1/sequences", "[]", [f"Bearer {expired}"])
    assert (status, json.loads(answer)) == (
        422,
        {"error": "validation_error", "message": "body: must be a JSON object"},
    )
    assert stack.counts() == before


@pytest.fixture(scope="module")
def rotating(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[tuple[Stack, Path]]:
    """A stack of its own (on SQLite: the store plays no part) trusting a copy of the JWKS
    that the test rewrites under it, and that copy."""
    jwks = tmp_path_factory.mktemp("rotating") / "jwks.json"
    jwks.write_text(keys.jwks_path.read_text())
    verifier = TokenVerifier(jwks, ISSUER, AUDIENCE)
    with (
        fresh_database_url("sqlite", tmp_path_factory) as url,
        running_stack(url, tmp_path_factory, keys, verifier) as stack,
    ):
        yield stack, jwks


def test_a_key_withdrawn_under_a_running_server_stops_working_within_seconds(
    rotating: tuple[Stack, Path], caplog: pytest.LogCaptureFixture
) -> None:
    stack, jwks = rotating
    rsa, ec = f"Bearer {stack.keys.token()}", f"Bearer {stack.keys.token('ec')}"
    good = jwks.read_text()
    for route in ROUTES:  # both work, and the server now remembers both tokens
        assert _call(stack, route, rsa)[0] == _call(stack, route, ec)[0] == 201
    stored = stack.counts()

    # A half-written file changes nothing: the last good keys stay, with one warning.
    jwks.write_text(good[: len(good) // 2])
    time.sleep(2.5)
    for route in ROUTES:
        assert _call(stack, route, rsa)[0] == _call(stack, route, ec)[0] == 201
    assert [r.getMessage() for r in caplog.records if "keeping the 2 keys" in r.getMessage()]
    assert stack.counts() == (stored[0] + 6, stored[1] + 18)

    # The RSA key is withdrawn: its tokens, even remembered ones, are refused within seconds.
    withdrawn = time.monotonic()
    jwks.write_text(
        json.dumps({"keys": [k for k in json.loads(good)["keys"] if k["kid"] == "ec-1"]})
    )
    while _call(stack, "grpc-direct", rsa)[0] == 201:
        assert time.monotonic() - withdrawn < 3, "the withdrawn key is still trusted"
        time.sleep(0.1)
    stored = stack.counts()
    message = "token is signed by an unknown key"
    for route in ROUTES:
        status, body = _call(stack, route, rsa)
        assert status == 401
        if route == "http":
            assert body == {"error": "unauthenticated", "message": message}
        else:
            assert body == (grpc.StatusCode.UNAUTHENTICATED, message, CHALLENGES[401])
        assert _call(stack, route, ec)[0] == 201  # the other key's tokens still work
    assert stack.counts() == (stored[0] + 3, stored[1] + 9)
