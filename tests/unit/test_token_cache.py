"""The verifier remembers verified tokens, but never past their expiry or a key change."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest

from comms.auth import TokenVerifier
from comms.errors import RpcFailure
from tests.tokens import AUDIENCE, ISSUER, Keys


def test_a_remembered_token_still_expires(keys: Keys) -> None:
    verifier = TokenVerifier(keys.jwks_path, ISSUER, AUDIENCE, leeway=0)
    token = keys.token(exp=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert verifier.verify(token).subject == "tester"
    assert verifier.verify(token).subject == "tester"
    time.sleep(1.1)
    with pytest.raises(RpcFailure, match="token has expired"):
        verifier.verify(token)


def test_rotating_the_keys_forgets_remembered_tokens(keys: Keys, tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(keys.jwks_path.read_text())
    verifier = TokenVerifier(jwks, ISSUER, AUDIENCE)
    old = keys.token()
    assert verifier.verify(old).subject == "tester"
    # The RSA key is withdrawn and the EC one stays; a token naming an unknown kid makes
    # the verifier reread the file.
    kept = [k for k in json.loads(jwks.read_text())["keys"] if k["kid"] == "ec-1"]
    jwks.write_text(json.dumps({"keys": kept}))
    os.utime(jwks, (time.time() + 5, time.time() + 5))
    with pytest.raises(RpcFailure, match="token is signed by an unknown key"):
        verifier.verify(keys.token(kid="rsa-2"))
    with pytest.raises(RpcFailure, match="token is signed by an unknown key"):
        verifier.verify(old)
