"""Which keys the server trusts, from its settings; and `comms dev-token`."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt
import pytest

from comms import auth, cli, devkeys
from comms.config import ConfigError, Settings, load
from comms.errors import RpcFailure
from tests.tokens import AUDIENCE, ISSUER, Keys


def test_production_without_keys_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="COMMS_AUTH_JWKS_PATH, COMMS_AUTH_ISSUER and "):
        auth.verifier_for(Settings(data_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []  # no development key made behind its back


def test_jwks_needs_issuer_and_audience(tmp_path: Path, keys: Keys) -> None:
    settings = Settings(data_dir=tmp_path, auth_jwks_path=keys.jwks_path, auth_issuer=ISSUER)
    with pytest.raises(ConfigError, match="must be set with COMMS_AUTH_JWKS_PATH"):
        auth.verifier_for(settings)


def test_unreadable_jwks_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(
        auth_jwks_path=tmp_path / "missing.json", auth_issuer=ISSUER, auth_audience=AUDIENCE
    )
    with pytest.raises(ConfigError, match="cannot use the JWKS file"):
        auth.verifier_for(settings)


def test_configured_keys_win_even_in_development(tmp_path: Path, keys: Keys) -> None:
    settings = Settings(
        data_dir=tmp_path,
        environment="development",
        auth_jwks_path=keys.jwks_path,
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
    )
    verifier = auth.verifier_for(settings)
    assert verifier.jwks_path == keys.jwks_path
    dev_token = devkeys.mint_token(tmp_path, ["sequences:write"])
    with pytest.raises(RpcFailure, match="token is signed by an unknown key"):
        verifier.verify(dev_token)


def test_development_makes_and_trusts_a_local_key_pair(tmp_path: Path) -> None:
    verifier = auth.verifier_for(Settings(data_dir=tmp_path, environment="development"))
    private = tmp_path / devkeys.PRIVATE_KEY_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (verifier.issuer, verifier.audience) == ("comms-dev", "comms")
    principal = verifier.verify(devkeys.mint_token(tmp_path, ["a", "b"], ["brand_1"]))
    assert principal.scopes == {"a", "b"} and principal.brand_ids == {"brand_1"}
    # A second start reuses the same pair.
    assert auth.verifier_for(Settings(data_dir=tmp_path, environment="development")).verify(
        devkeys.mint_token(tmp_path, ["a"])
    ).scopes == {"a"}


def test_dev_token_prints_the_token_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMMS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("COMMS_AUTH_JWKS_PATH", raising=False)
    args = ["dev-token", "--scope", "sequences:write", "--brand", "b1", "--brand", "b2"]
    assert cli.main([*args, "--ttl", "120"]) == 0
    token = capsys.readouterr().out.splitlines()[-1]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["scope"] == "sequences:write"
    assert claims["brand_ids"] == ["b1", "b2"]
    assert abs(claims["exp"] - time.time() - 120) < 5
    assert auth.verifier_for(load({"COMMS_DATA_DIR": str(tmp_path), "COMMS_ENV": "development"}))


def test_dev_token_defaults_to_every_declared_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMMS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("COMMS_AUTH_JWKS_PATH", raising=False)
    assert cli.main(["dev-token"]) == 0
    token = capsys.readouterr().out.splitlines()[-1]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["scope"].split() == sorted(set(auth.required_scopes().values()))
    assert claims["scope"].split() == ["sequences:publish", "sequences:read", "sequences:write"]
    assert "brand_ids" not in claims


def test_every_rpc_declares_a_scope() -> None:
    scopes = auth.required_scopes()
    assert scopes["/comms.v1.SequenceService/CreateSequence"] == "sequences:write"
    for move in ("Activate", "Pause", "Resume", "Archive"):
        assert scopes[f"/comms.v1.SequenceService/{move}Sequence"] == "sequences:publish"
    for method in ("Update", "Delete", "Undelete"):
        assert scopes[f"/comms.v1.SequenceService/{method}Sequence"] == "sequences:write"
    assert all(scopes.values()), scopes
