"""Validators for the schemas of the OpenAPI document, with its x-unique-by keyword.

JSON Schema cannot say "no two items share this property"; the document says it with
x-unique-by (comms.openapi.UNIQUE_BY), and these validators enforce it like any keyword."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from comms.openapi import UNIQUE_BY

DOCUMENT_URI = "urn:comms:openapi"


def _key(value: Any) -> Any:
    """Equal JSON values, equal keys: 4 and 4.0 are one number (but true is not 1)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return json.dumps(value, sort_keys=True)


def _unique_by(
    validator: Any, name: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "array"):
        return
    first: dict[Any, int] = {}
    for index, item in enumerate(instance):
        if isinstance(item, dict) and name in item:
            key = _key(item[name])
            if key in first:
                yield jsonschema.ValidationError(
                    f"items {first[key]} and {index} share {name} {item[name]!r}"
                )
            first.setdefault(key, index)


Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {UNIQUE_BY: _unique_by})


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def body_pointer(path: str, method: str) -> str:
    """Where the JSON request body schema of an operation is in the document."""
    return f"/paths/{_escape(path)}/{method}/requestBody/content/application~1json/schema"


def response_pointer(document: dict[str, Any], path: str, method: str, status: int) -> str:
    """Where the JSON schema of one response of an operation is (through a response $ref)."""
    pointer = f"/paths/{_escape(path)}/{method}/responses/{status}"
    ref = document["paths"][path][method]["responses"][str(status)].get("$ref")
    if ref:
        pointer = ref.removeprefix("#")
    return f"{pointer}/content/application~1json/schema"


def validator(document: dict[str, Any], pointer: str) -> Any:
    """A validator of the schema at pointer in document (its $refs resolve in document)."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
    return Validator({"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=registry)
