"""GET /openapi.json through the real Envoy: the generated document, as is, to anyone."""

from __future__ import annotations

import json

import pytest

from comms import gateway
from tests.integration.conftest import Stack

NO_TOKEN: dict[str, str | None] = {"Authorization": None}


def test_the_document_is_served_as_generated(stack: Stack) -> None:
    response = stack.envoy.request("GET", "/openapi.json", headers=NO_TOKEN)
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.body == gateway.openapi_path().read_bytes()
    assert json.loads(response.body)["openapi"] == "3.1.0"


def test_head_has_the_headers_and_no_body(stack: Stack) -> None:
    response = stack.envoy.request("HEAD", "/openapi.json", headers=NO_TOKEN)
    size = str(len(gateway.openapi_path().read_bytes()))
    assert (response.status, response.body) == (200, b"")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == size


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405(stack: Stack, method: str) -> None:
    response = stack.envoy.request(method, "/openapi.json", "{}", NO_TOKEN)
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {
        "error": "method_not_allowed",
        "message": f"method {method} is not allowed on /openapi.json; allowed: GET, HEAD",
    }
