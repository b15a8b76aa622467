"""Test signing keys, their JWKS file, and tokens made to order (good ones and every bad kind)."""

from __future__ import annotations

import base64
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from comms.auth import TokenVerifier

ISSUER = "https://issuer.test/"
AUDIENCE = "comms-test"
ALL_SCOPES = "sequences:read sequences:write sequences:publish"


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

    @staticmethod
    def claims(**overrides: Any) -> dict[str, Any]:
        """Good claims unless overridden (a None value leaves the claim out)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "tester",
            "iat": now,
            "exp": now + 7200,
            "scope": ALL_SCOPES,
        } | overrides
        return {k: v for k, v in body.items() if v is not None}

    def token(self, key: str = "rsa", kid: str | None = None, **claims: Any) -> str:
        """A token with good claims unless overridden (see claims), signed with key ("rsa",
        "ec" or "stranger"), naming kid if given."""
        body = self.claims(**claims)
        if key == "ec":
            return jwt.encode(body, self.ec, algorithm="ES256", headers={"kid": kid or "ec-1"})
        signer = self.stranger if key == "stranger" else self.rsa
        return jwt.encode(body, signer, algorithm="RS256", headers={"kid": kid or "rsa-1"})

    def forged(self, header: Any, claims: Any, key: str = "rsa") -> str:
        """A token of exactly this header and these claims, any JSON at all (even what PyJWT
        refuses to encode), signed with key ("rsa", "ec", "stranger"; "none": no signature)."""
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        data = signing_input.encode()
        if key == "none":
            signature = b""
        elif key == "ec":
            signature = ECAlgorithm(ECAlgorithm.SHA256).sign(data, self.ec)
        else:
            signer = self.stranger if key == "stranger" else self.rsa
            signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(data, signer)
        return f"{signing_input}.{_b64(signature)}"

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
