"""The verifier remembers verified tokens, but never past their expiry (key changes: see
test_key_rotation.py)."""

from __future__ import annotations

import datetime as dt
import time

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
