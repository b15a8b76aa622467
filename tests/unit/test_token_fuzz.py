"""The token path under Hypothesis: whatever the header, the claims, the signature or the
bytes, verifying answers a Principal or the 401 RpcFailure, and logs no traceback.

Deterministic (derandomized, no example database) and bounded (200 examples a test, a few
seconds in all), so CI sees the same examples every run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comms import auth
from comms.errors import RpcFailure
from tests.tokens import AUDIENCE, ISSUER, Keys

FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Every JSON type, numbers far out of range (huge, negative, fractional, non-finite), nesting.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _good_or_any(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return good | json_values


headers = (
    st.fixed_dictionaries(
        {},
        optional={
            "alg": _good_or_any(st.sampled_from(["RS256", "ES256", "none", "HS256", "rs256"])),
            "kid": _good_or_any(st.sampled_from(["rsa-1", "ec-1", "", "unknown"])),
            "typ": _good_or_any(st.just("JWT")),
            "crit": _good_or_any(st.just(["b64"])),
            "b64": json_values,
            "jku": json_values,
        },
    )
    | json_values
)

times = st.integers(min_value=1_700_000_000, max_value=2_100_000_000)
claims = (
    st.fixed_dictionaries(
        {},
        optional={
            "iss": _good_or_any(st.just(ISSUER)),
            "aud": _good_or_any(st.sampled_from([AUDIENCE, [AUDIENCE, "other"], []])),
            "sub": _good_or_any(st.sampled_from(["tester", ""])),
            "exp": _good_or_any(times),
            "nbf": _good_or_any(times),
            "iat": _good_or_any(times),
            "scope": _good_or_any(st.sampled_from(["sequences:write", "a\u00a0b  c"])),
            "brand_ids": _good_or_any(st.lists(st.text(max_size=5), max_size=3)),
            "jti": json_values,
        },
    )
    | json_values
)
signers = st.sampled_from(["rsa", "ec", "stranger", "none"])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def logged() -> Iterator[_Records]:
    """Every record logged while the module runs (a module fixture: Hypothesis reruns the
    test body, which a function-scoped caplog would not follow)."""
    handler, root = _Records(), logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.DEBUG
    yield handler
    root.removeHandler(handler)
    root.level = level


@pytest.fixture(scope="module")
def verifier(keys: Keys) -> auth.TokenVerifier:
    return keys.verifier()


def _accepted_as(body: dict[str, Any], principal: auth.Principal) -> None:
    """An accepted token's claims keep the rules, and mean what the Principal says."""
    for name in ("exp", "nbf", "iat"):
        value = body.get(name, 0)
        assert type(value) is int and 0 <= value <= 253402300799, (name, value)
    assert principal.subject == body["sub"] != ""
    assert principal.scopes == set(body.get("scope", "").split(" ")) - {""}
    assert principal.brand_ids == (set(body["brand_ids"]) if "brand_ids" in body else None)


def _verifies_or_refuses(
    verifier: auth.TokenVerifier, token: str, logged: _Records, body: Any = None
) -> None:
    before = len(logged.records)
    try:
        principal = verifier.verify(token)
    except RpcFailure as refusal:
        assert refusal.code == grpc.StatusCode.UNAUTHENTICATED
        assert 0 < len(refusal.message) <= 200
        assert len(token) < 16 or token not in refusal.message
        assert ("www-authenticate", 'Bearer realm="comms", error="invalid_token"') in (
            refusal.status.trailing_metadata
        )
    else:
        _accepted_as(body, principal)
    new = logged.records[before:]
    assert not [r for r in new if r.exc_info or r.levelno >= logging.ERROR], [
        r.getMessage() for r in new
    ]


@FUZZ
@given(header=headers, body=claims, signer=signers)
def test_any_json_signed_any_way(
    verifier: auth.TokenVerifier, keys: Keys, logged: _Records, header: Any, body: Any, signer: str
) -> None:
    _verifies_or_refuses(verifier, keys.forged(header, body, signer), logged, body)


@FUZZ
@given(
    header=headers,
    signer=signers,
    overrides=st.dictionaries(
        st.sampled_from(["exp", "nbf", "iat", "sub", "scope", "brand_ids", "aud"]),
        json_values,
        max_size=2,
    ),
)
def test_good_claims_with_a_few_bad_ones(
    verifier: auth.TokenVerifier,
    keys: Keys,
    logged: _Records,
    header: Any,
    signer: str,
    overrides: dict[str, Any],
) -> None:
    """Mostly valid tokens, so that the examples get past the signature to the claims."""
    good_header = {"alg": "ES256" if signer == "ec" else "RS256", "kid": f"{signer}-1"}
    if isinstance(header, dict):
        good_header |= {k: v for k, v in header.items() if k not in ("alg", "kid")}
    body = keys.claims() | overrides
    _verifies_or_refuses(verifier, keys.forged(good_header, body, signer), logged, body)


@FUZZ
@given(
    token=st.text(max_size=300)
    | st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))
    | st.lists(st.text("abcXYZ019-_=.+/ \u00e9", max_size=40), min_size=1, max_size=5).map(".".join)
)
def test_any_string(verifier: auth.TokenVerifier, logged: _Records, token: str) -> None:
    _verifies_or_refuses(verifier, token, logged)


@FUZZ
@given(value=st.text(max_size=200))
def test_any_authorization_header(
    verifier: auth.TokenVerifier, logged: _Records, keys: Keys, value: str
) -> None:
    """bearer_token and verify together, as the interceptor runs them."""
    for metadata in ([("authorization", value)], [("authorization", f"Bearer {value}")]):
        before = len(logged.records)
        try:
            verifier.verify(auth.bearer_token(metadata))
        except RpcFailure as refusal:
            assert refusal.code == grpc.StatusCode.UNAUTHENTICATED
        assert not [r for r in logged.records[before:] if r.exc_info]
