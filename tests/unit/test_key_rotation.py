"""The JWKS file under a running verifier: keys added and withdrawn take effect within the
recheck interval, remembered tokens go with their key, and a broken file changes nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jwt
import pytest

from comms import auth
from comms.auth import TokenVerifier
from comms.errors import RpcFailure
from tests.tokens import AUDIENCE, ISSUER, Keys


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _jwks(keys: Keys) -> list[dict[str, Any]]:
    return list(json.loads(keys.jwks_path.read_text())["keys"])


def _public(key: Any, kid: str) -> dict[str, Any]:
    return dict(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))) | {"kid": kid}


@pytest.fixture
def jwks(keys: Keys, tmp_path: Path) -> Path:
    """A copy of the session's JWKS (rsa-1 and ec-1) that the test may rewrite."""
    path = tmp_path / "jwks.json"
    path.write_text(keys.jwks_path.read_text())
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(jwks: Path, clock: Clock) -> TokenVerifier:
    return TokenVerifier(jwks, ISSUER, AUDIENCE, recheck_seconds=1.0, clock=clock)


def _write(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"keys": entries}))


def test_a_withdrawn_key_stops_working_within_the_interval(
    keys: Keys, jwks: Path, clock: Clock, verifier: TokenVerifier
) -> None:
    rsa_token, ec_token = keys.token(), keys.token("ec")
    assert verifier.verify(rsa_token).subject == "tester"  # now remembered
    assert verifier.verify(ec_token).subject == "tester"
    _write(jwks, [k for k in _jwks(keys) if k["kid"] == "ec-1"])
    clock.now += 0.5  # not yet rechecked
    assert verifier.verify(rsa_token).subject == "tester"
    clock.now += 0.5
    with pytest.raises(RpcFailure, match=r"^token is signed by an unknown key$"):
        verifier.verify(rsa_token)
    with pytest.raises(RpcFailure, match=r"^token is signed by an unknown key$"):
        verifier.verify(keys.token())  # a fresh one, never remembered
    assert verifier.verify(ec_token).subject == "tester"


def test_a_key_added_is_trusted_within_the_interval(
    keys: Keys, jwks: Path, clock: Clock, verifier: TokenVerifier
) -> None:
    token = keys.token("stranger", kid="rsa-2")
    with pytest.raises(RpcFailure, match=r"^token is signed by an unknown key$"):
        verifier.verify(token)
    _write(jwks, [*_jwks(keys), _public(keys.stranger, "rsa-2")])
    clock.now += 1.0
    assert verifier.verify(token).subject == "tester"


def test_a_kid_given_another_key_forgets_what_the_old_key_verified(
    keys: Keys, jwks: Path, clock: Clock, verifier: TokenVerifier
) -> None:
    old, ec_token = keys.token(), keys.token("ec")
    assert verifier.verify(old).subject == verifier.verify(ec_token).subject == "tester"
    _write(jwks, [_public(keys.stranger, "rsa-1"), *_jwks(keys)[1:]])
    clock.now += 1.0
    with pytest.raises(RpcFailure, match=r"^token signature is invalid$"):
        verifier.verify(old)
    assert verifier.verify(keys.token("stranger", kid="rsa-1")).subject == "tester"
    assert verifier.verify(ec_token).subject == "tester"


def test_no_token_makes_the_file_be_read_more_than_once_an_interval(
    keys: Keys, jwks: Path, clock: Clock, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    read_bytes = Path.read_bytes

    def counted(path: Path) -> bytes:
        reads.append(path)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", counted)
    parsed: list[bytes] = []
    parse = auth._parse_keys
    monkeypatch.setattr(auth, "_parse_keys", lambda s, p: parsed.append(s) or parse(s, p))
    for i in range(200):  # unknown kids, garbage and good tokens, all within one interval
        with pytest.raises(RpcFailure):
            verifier.verify(keys.token(kid=f"unknown-{i}"))
        with pytest.raises(RpcFailure):
            verifier.verify(f"garbage-{i}")
        verifier.verify(keys.token())
    assert reads == []
    clock.now += 1.0
    for i in range(200):
        with pytest.raises(RpcFailure):
            verifier.verify(keys.token(kid=f"unknown-{i}"))
    assert reads == [jwks]
    assert parsed == []  # unchanged: read, not parsed again


BROKEN = {
    "half written": lambda text: text[: len(text) // 2],
    "not JSON": lambda text: "{keys: [",
    "nested too deep": lambda text: "[" * 100_000,
    "not a JWKS": lambda text: '[{"keys": []}]',
    "no keys": lambda text: '{"keys": []}',
    "keys not objects": lambda text: '{"keys": ["rsa-1"]}',
    "only unsupported keys": lambda text: '{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}',
    "a malformed RSA key": lambda text: '{"keys": [{"kty": "RSA", "kid": "rsa-1", "n": "AQAB"}]}',
    "empty": lambda text: "",
}


@pytest.mark.parametrize("broken", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_file_keeps_the_last_good_keys(
    keys: Keys,
    jwks: Path,
    clock: Clock,
    verifier: TokenVerifier,
    caplog: pytest.LogCaptureFixture,
    broken: Any,
) -> None:
    good = jwks.read_text()
    rsa_token = keys.token()
    assert verifier.verify(rsa_token).subject == "tester"
    jwks.write_text(broken(good))
    for _ in range(3):  # warned once, not every interval
        clock.now += 1.0
        assert verifier.verify(rsa_token).subject == "tester"
        assert verifier.verify(keys.token("ec")).subject == "tester"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    keeping = [r for r in warnings if "keeping the 2 keys loaded before" in r.getMessage()]
    assert len(keeping) == 1, [r.getMessage() for r in warnings]
    assert all(r.exc_info is None for r in caplog.records)
    # Fixed again, with the RSA key withdrawn: taken up at the next check.
    _write(jwks, [k for k in json.loads(good)["keys"] if k["kid"] == "ec-1"])
    clock.now += 1.0
    with pytest.raises(RpcFailure, match=r"^token is signed by an unknown key$"):
        verifier.verify(rsa_token)


def test_a_removed_file_keeps_the_last_good_keys(
    keys: Keys, jwks: Path, clock: Clock, verifier: TokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    jwks.unlink()
    clock.now += 1.0
    assert verifier.verify(keys.token()).subject == "tester"
    clock.now += 1.0
    assert verifier.verify(keys.token("ec")).subject == "tester"
    keeping = [r for r in caplog.records if "keeping the 2 keys" in r.getMessage()]
    assert len(keeping) == 1 and "No such file" in keeping[0].getMessage()
