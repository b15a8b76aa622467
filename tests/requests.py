"""The valid create request every test starts from and breaks one field of."""

from __future__ import annotations

from typing import Any


def valid_body() -> dict[str, Any]:
    """A valid POST /v1/sequences body (also valid as grpcurl JSON)."""
    return {
        "brand_id": "brand_123",
        "name": "Welcome series",
        "description": "Greets new members",
        "steps": [
            {"position": 0, "channel": "email", "template_key": "welcome", "delay_minutes": 0},
            {"position": 1, "channel": "sms", "template_key": "nudge", "delay_minutes": 1440},
            {"position": 5, "channel": "in_app", "template_key": "tips", "delay_minutes": 2880},
        ],
    }


def _parent(body: dict[str, Any], path: str) -> tuple[Any, str]:
    """The container and key a dotted path ("steps.1.channel") names."""
    *parents, last = path.split(".")
    target: Any = body
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    return target, last


def with_value(path: str, value: Any) -> dict[str, Any]:
    """The valid body with one field set, e.g. with_value("steps.1.channel", "fax")."""
    body = valid_body()
    target, key = _parent(body, path)
    target[key] = value
    return body


def without(path: str) -> dict[str, Any]:
    """The valid body with one field left out."""
    body = valid_body()
    target, key = _parent(body, path)
    del target[key]
    return body
