"""Opaque page tokens for ListSequences: the position after the last item served, bound to
the brand and signed, so that an altered or foreign token is refused rather than obeyed."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any


class PageTokenError(ValueError):
    """The token was not issued by this service for this listing."""


@dataclass(frozen=True)
class Cursor:
    """The last item served: the next page starts strictly after it (newest first)."""

    created_at: dt.datetime
    id: uuid.UUID


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:16]


def _sign(secret: bytes, values: list[object]) -> str:
    payload = json.dumps(values, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def _open(secret: bytes, scope: str, token: str, scope_name: str) -> list[Any]:
    """The values signed into the token after its scope (a brand or a sequence id)."""
    try:
        payload_text, mac_text = token.split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, binascii.Error):
        raise PageTokenError("is not a page token this service issued") from None
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise PageTokenError("is not a page token this service issued") from None
    issued_for, *values = json.loads(payload)  # signed by us: the shape is ours
    if issued_for != scope:
        raise PageTokenError(f"was issued for another {scope_name}; list again without it")
    return list(values)


def encode(secret: bytes, brand_id: str, cursor: Cursor) -> str:
    return _sign(secret, [brand_id, cursor.created_at.isoformat(), cursor.id.hex])


def decode(secret: bytes, brand_id: str, token: str) -> Cursor:
    created_at, id_hex = _open(secret, brand_id, token, "brand_id")
    return Cursor(dt.datetime.fromisoformat(created_at), uuid.UUID(hex=id_hex))


# A revisions listing is scoped to its sequence; the cursor is the last revision served.
# ("r:" keeps such a token from ever passing for a brand's.)
def encode_revision(secret: bytes, sequence_id: uuid.UUID, revision: int) -> str:
    return _sign(secret, [f"r:{sequence_id}", revision])


def decode_revision(secret: bytes, sequence_id: uuid.UUID, token: str) -> int:
    (revision,) = _open(secret, f"r:{sequence_id}", token, "sequence")
    return int(revision)
