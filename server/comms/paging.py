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


def encode(secret: bytes, brand_id: str, cursor: Cursor) -> str:
    payload = json.dumps(
        [brand_id, cursor.created_at.isoformat(), cursor.id.hex], separators=(",", ":")
    ).encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def decode(secret: bytes, brand_id: str, token: str) -> Cursor:
    try:
        payload_text, mac_text = token.split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, binascii.Error):
        raise PageTokenError("is not a page token this service issued") from None
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise PageTokenError("is not a page token this service issued") from None
    issued_for, created_at, id_hex = json.loads(payload)
    if issued_for != brand_id:
        raise PageTokenError("was issued for another brand_id; list again without it")
    return Cursor(dt.datetime.fromisoformat(created_at), uuid.UUID(hex=id_hex))
