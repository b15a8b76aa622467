"""The development key pair: made under the data directory on first use, trusted only when
COMMS_ENV=development and no JWKS is configured, and used by `comms dev-token`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "comms-dev"
AUDIENCE = "comms"
PRIVATE_KEY_FILE = "dev-signing-key.pem"
JWKS_FILE = "dev-jwks.json"


def _kid(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def ensure_keys(data_dir: Path) -> Path:
    """The development JWKS file, with its private key beside it (mode 0600); made once."""
    private_path, jwks_path = data_dir / PRIVATE_KEY_FILE, data_dir / JWKS_FILE
    if private_path.exists() and jwks_path.exists():
        return jwks_path
    data_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public |= {"kid": _kid(key.public_key()), "alg": "ES256", "use": "sig"}
    jwks_path.write_text(json.dumps({"keys": [public]}, indent=2) + "\n")
    return jwks_path


def mint_token(
    data_dir: Path,
    scopes: Iterable[str],
    brand_ids: Iterable[str] | None = None,
    ttl_seconds: int = 3600,
    subject: str = "developer",
) -> str:
    """A token signed with the development key."""
    ensure_keys(data_dir)
    key = serialization.load_pem_private_key((data_dir / PRIVATE_KEY_FILE).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(seconds=ttl_seconds),
        "jti": str(uuid.uuid4()),
        "scope": " ".join(scopes),
    }
    if brand_ids is not None:
        claims["brand_ids"] = list(brand_ids)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": _kid(key.public_key())})
