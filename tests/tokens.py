"""Test signing keys, their JWKS file, and tokens made to order (good ones and every bad kind)."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from comms.auth import TokenVerifier

ISSUER = "https://issuer.test/"
AUDIENCE = "comms-test"
ALL_SCOPES = "sequences:read sequences:write"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    stranger: rsa.RSAPrivateKey  # not in the JWKS
    jwks_path: Path

    @classmethod
    def create(cls, directory: Path) -> Keys:
        keys = cls(
            rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ec=ec.generate_private_key(ec.SECP256R1()),
            stranger=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            jwks_path=directory / "jwks.json",
        )
        public = [
            json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys.rsa.public_key()))
            | {"kid": "rsa-1"},
            json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys.ec.public_key())) | {"kid": "ec-1"},
        ]
        keys.jwks_path.write_text(json.dumps({"keys": public}))
        return keys

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(self.jwks_path, ISSUER, AUDIENCE, leeway=30)

    def token(self, key: str = "rsa", kid: str | None = None, **claims: Any) -> str:
        """A token with good claims unless overridden (a None value leaves the claim out),
        signed with key ("rsa", "ec" or "stranger"), naming kid if given."""
        now = dt.datetime.now(dt.UTC)
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "tester",
            "iat": now,
            "exp": now + dt.timedelta(hours=2),
            "scope": ALL_SCOPES,
        } | claims
        body = {k: v for k, v in body.items() if v is not None}
        if key == "ec":
            return jwt.encode(body, self.ec, algorithm="ES256", headers={"kid": kid or "ec-1"})
        signer = self.stranger if key == "stranger" else self.rsa
        return jwt.encode(body, signer, algorithm="RS256", headers={"kid": kid or "rsa-1"})

    def unsigned_token(self) -> str:
        """alg none: no signature at all."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
        claims = _b64(
            json.dumps(
                {"iss": ISSUER, "aud": AUDIENCE, "scope": ALL_SCOPES, "exp": 4102444800}
            ).encode()
        )
        return f"{header}.{claims}."

    def hs256_with_public_key(self) -> str:
        """HS256 keyed with the RSA public key's PEM: the classic algorithm-confusion attack."""
        pem = self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        claims = _b64(
            json.dumps(
                {"iss": ISSUER, "aud": AUDIENCE, "scope": ALL_SCOPES, "exp": 4102444800}
            ).encode()
        )
        signature = hmac.new(pem, f"{header}.{claims}".encode(), "sha256").digest()
        return f"{header}.{claims}.{_b64(signature)}"
