"""Schemathesis hooks for `make fuzz` (loaded through schemathesis.toml).

A positive case is one the service must accept. Some rules cannot be met by a generator that
knows only the document; each is handled below as narrowly as it can be. Filters, not maps:
any map_case hook makes schemathesis generate several times slower."""

from __future__ import annotations

import functools
import json
from typing import Any

import schemathesis
from schemathesis.core import NOT_SET

from tests.openapi_schema import body_pointer, validator

# The idempotency key of each positive create let through -> its body without the key. A key
# is the caller's, whatever the brand: the body (brand_id in it) must match.
_first_body: dict[str, str] = {}


@functools.cache
def _body_validator(operation: Any) -> Any:
    path, method = operation.path, operation.method.lower()
    return validator(operation.schema.raw_schema, body_pointer(path, method))


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    # Envoy refuses a QUERY without Content-Type (400 bad_request: the method's draft wants a
    # body) before any route could answer 405; with one it is 405 like any other method.
    if case.method.upper() == "QUERY" and case.body is NOT_SET:
        return False
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return True  # any refusal is right for a negative case
    # A page token is valid only if the service issued it (tests/integration cover paging).
    if isinstance(case.query, dict) and "page_token" in case.query:
        return False
    if not isinstance(case.body, dict):
        return True
    # x-unique-by (unique step positions) is an extension keyword: the generator does not
    # know it, the document's validator does.
    if not _body_validator(case.operation).is_valid(case.body):
        return False
    # Generated idempotency keys repeat ("0"...): keep a key to the first body it came with.
    key = case.body.get("request_id")
    if isinstance(key, str) and key:
        body = json.dumps({k: v for k, v in case.body.items() if k != "request_id"}, sort_keys=True)
        return _first_body.setdefault(key, body) == body
    return True


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case,
    response: Any,
) -> bool:
    """An idempotency key names one create: sent again with another body, it is refused by
    design (422 idempotency_key_reused). filter_case keeps most such pairs out, not those whose
    body a stateful link changed after it; this refusal alone is let pass, and schemathesis
    counts it as dropped."""
    reused = response.status_code == 422 and b'"idempotency_key_reused"' in response.content
    return not (failure.code == "ST202" and reused)
