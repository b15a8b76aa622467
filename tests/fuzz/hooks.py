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

# The idempotency key of each positive call let through -> that call without the key. A key
# is the caller's, whatever the brand or method: the whole call must match.
_first_call: dict[str, str] = {}


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
    # A page token is valid only if the service issued it (tests/integration cover paging);
    # an etag only if it is the sequence's current one (tests/integration cover etags).
    if isinstance(case.query, dict) and ({"page_token", "etag"} & set(case.query)):
        return False
    if isinstance(case.body, dict) and case.body.get("etag"):
        return False
    # An update's mask that names name clears it when the body has none, which the create
    # rules refuse: a rule across query and body the document cannot state.
    mask = case.query.get("update_mask") if isinstance(case.query, dict) else None
    named = isinstance(mask, str) and "name" in mask.split(",")
    if named and not (isinstance(case.body, dict) and case.body.get("name")):
        return False
    # Generated idempotency keys repeat ("0"...): keep a key (request_id, in the body or the
    # query) to the first call it came with.
    query = dict(case.query) if isinstance(case.query, dict) else {}
    body = dict(case.body) if isinstance(case.body, dict) else case.body
    key = (body.pop("request_id", None) if isinstance(body, dict) else None) or query.pop(
        "request_id", None
    )
    if isinstance(key, str) and key:
        call = [case.method, case.path, case.path_parameters, query, body]
        if _first_call.setdefault(key, json.dumps(call, sort_keys=True, default=str)) != (
            json.dumps(call, sort_keys=True, default=str)
        ):
            return False
    # x-unique-by (unique step positions) is an extension keyword: the generator does not
    # know it, the document's validator does.
    return not isinstance(case.body, dict) or _body_validator(case.operation).is_valid(case.body)


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case,
    response: Any,
) -> bool:
    """An idempotency key names one call: sent again with another body, it is refused by
    design (422 idempotency_key_reused). filter_case keeps most such pairs out, not those whose
    body a stateful link changed after it; this refusal alone is let pass, and schemathesis
    counts it as dropped."""
    reused = response.status_code == 422 and b'"idempotency_key_reused"' in response.content
    # Likewise a sequence without steps cannot go live: a rule of its stored state, which no
    # document can state for the request (tests/integration cover it).
    stepless = response.status_code == 422 and b"must have at least 1 step to " in response.content
    return not (failure.code == "ST202" and (reused or stepless))
