"""The HTTP API as an OpenAPI 3.1 document, generated from the descriptor set Envoy loads.

Every method of every service in package comms.v1 with a google.api.http rule becomes an
operation. Schemas follow what the gateway really prints and reads: proto field names
(snake_case), enum value names, and the request rules of the proto's buf.validate annotations
(which comms.validation checks). Proto doc comments become descriptions; text between (-- and
--) is internal (AIP-192) and left out.

    python -m comms.openapi [DESCRIPTOR_SET] [-o OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2

from buf.validate import validate_pb2
from comms import gateway, httpapi

PACKAGE = "comms.v1"
FD = descriptor_pb2.FieldDescriptorProto
Schema = dict[str, Any]
# The stubs type this extension as a plain field, which Extensions[] does not take.
FIELD_RULES: Any = validate_pb2.field

# JSON Schema has no keyword for "no two items share a property value"; this extension says
# it, and the seed test and the fuzz hooks (tests/fuzz) honour it.
UNIQUE_BY = "x-unique-by"
INT32_MAX = 2**31 - 1

# The buf.validate rules of a request field (comms.validation checks them) as JSON Schema
# keywords, by the rule's name in its kind; a rule not listed here stops the build, so that no
# rule is enforced without being described.
STRING_RULES = {"min_len": "minLength", "max_len": "maxLength", "pattern": "pattern"}
NUMBER_RULES = {
    "gte": "minimum",
    "gt": "exclusiveMinimum",
    "lte": "maximum",
    "lt": "exclusiveMaximum",
}
RULES: dict[str, dict[str, str]] = {
    "string": STRING_RULES,
    **dict.fromkeys(("int32", "sint32", "sfixed32", "uint32", "fixed32"), NUMBER_RULES),
    **dict.fromkeys(("float", "double"), NUMBER_RULES),
    "repeated": {"min_items": "minItems", "max_items": "maxItems", "unique": "uniqueItems"},
    "enum": {"defined_only": ""},  # the schema lists only the defined words anyway
}
# A CEL rule the document can state: no two items of a list share this field's value.
_UNIQUE_CEL = re.compile(r"\.map\((\w+), \1\.(\w+)\)\.unique\(\)")

# Fields whose JSON the proto type cannot tell: a Value can hold any JSON, this one holds a
# string, or null for none.
JSON_TYPES: dict[str, Schema] = {
    "comms.v1.Sequence.description": {"type": ["string", "null"]},
}

_INT32 = {"type": "integer", "minimum": -INT32_MAX - 1, "maximum": INT32_MAX}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": "string", "format": "int64"}  # protobuf's JSON prints 64-bit integers as strings
SCALARS: dict[int, Schema] = {
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_DOUBLE: {"type": "number"},
    FD.TYPE_FLOAT: {"type": "number"},
    FD.TYPE_INT32: _INT32,
    FD.TYPE_SINT32: _INT32,
    FD.TYPE_SFIXED32: _INT32,
    FD.TYPE_UINT32: _UINT32,
    FD.TYPE_FIXED32: _UINT32,
    FD.TYPE_INT64: _INT64,
    FD.TYPE_SINT64: _INT64,
    FD.TYPE_SFIXED64: _INT64,
    FD.TYPE_UINT64: _INT64,
    FD.TYPE_FIXED64: _INT64,
}
WELL_KNOWN: dict[str, Schema] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    ".google.protobuf.FieldMask": {"type": "string"},
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.Struct": {"type": "object"},
    ".google.protobuf.ListValue": {"type": "array"},
    ".google.protobuf.Value": {},
}

# Headers that come with an error status (its words are comms.httpapi.ERRORS).
ERROR_HEADERS: dict[int, tuple[str, str]] = {
    405: ("Allow", "The methods the path serves."),
    401: ("WWW-Authenticate", "The Bearer challenge, saying what is wrong with the token."),
}
SECURITY_SCHEME = "bearer"


def _comment(text: str) -> str:
    """A proto doc comment as one paragraph, without its (-- internal --) parts."""
    text = re.sub(r"\(--.*?--\)", "", text, flags=re.DOTALL)
    return " ".join(text.split())


def _or_null(schema: Schema) -> Schema:
    """The schema, also allowing null: protobuf's JSON mapping reads null as absent."""
    kind = schema.get("type")
    if isinstance(kind, list):
        return schema if "null" in kind else {**schema, "type": [*kind, "null"]}
    if isinstance(kind, str):
        nullable = {**schema, "type": [kind, "null"]}
        if "enum" in schema:
            nullable["enum"] = [*schema["enum"], None]
        return nullable
    rest = {k: v for k, v in schema.items() if k != "description"}
    return _described({"anyOf": [rest, {"type": "null"}]}, schema.get("description", ""))


def _described(schema: Schema, text: str) -> Schema:
    return {"description": text, **schema} if text else schema


class Descriptors:
    """Messages, enums and doc comments of a descriptor set, by full name (".pkg.Name")."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = list(files.file)
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[str, str] = {}  # full name (fields: ".pkg.Msg.field") -> comment
        for file in self.files:
            notes = {
                tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location
            }
            prefix = f".{file.package}" if file.package else ""
            for i, message in enumerate(file.message_type):
                self._add_message(prefix, message, (4, i), notes)
            for i, enum in enumerate(file.enum_type):
                self._add_enum(prefix, enum, (5, i), notes)
            for i, service in enumerate(file.service):
                name = f"{prefix}.{service.name}"
                self._note(name, notes, (6, i))
                for j, method in enumerate(service.method):
                    self._note(f"{name}.{method.name}", notes, (6, i, 2, j))

    def _note(self, name: str, notes: dict[tuple[int, ...], str], path: tuple[int, ...]) -> None:
        text = _comment(notes.get(path, ""))
        if text:
            self.comments[name] = text

    def _add_message(
        self,
        prefix: str,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        notes: dict[tuple[int, ...], str],
    ) -> None:
        name = f"{prefix}.{message.name}"
        self.messages[name] = message
        self._note(name, notes, path)
        for k, field in enumerate(message.field):
            self._note(f"{name}.{field.name}", notes, (*path, 2, k))
        for k, nested in enumerate(message.nested_type):
            self._add_message(name, nested, (*path, 3, k), notes)
        for k, enum in enumerate(message.enum_type):
            self._add_enum(name, enum, (*path, 4, k), notes)

    def _add_enum(
        self,
        prefix: str,
        enum: descriptor_pb2.EnumDescriptorProto,
        path: tuple[int, ...],
        notes: dict[tuple[int, ...], str],
    ) -> None:
        name = f"{prefix}.{enum.name}"
        self.enums[name] = enum
        self._note(name, notes, path)

    def services(self) -> Iterator[tuple[str, descriptor_pb2.ServiceDescriptorProto]]:
        for file in self.files:
            if file.package == PACKAGE:
                for service in file.service:
                    yield f".{file.package}.{service.name}", service


def _behaviors(field: descriptor_pb2.FieldDescriptorProto) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


def _rules(field: descriptor_pb2.FieldDescriptorProto) -> validate_pb2.FieldRules:
    rules: validate_pb2.FieldRules = field.options.Extensions[FIELD_RULES]
    return rules


def _literal(text: str) -> str:
    """A regular expression matching text, in the syntax ECMA-262 and Python share."""
    return "".join(c if c.isalnum() or ord(c) > 0xFFFF else f"\\u{ord(c):04x}" for c in text)


def _kind_schema(kind: str, rules: Any, full: str) -> Schema:
    """The JSON Schema keywords of one kind of rules (string, int32, repeated...)."""
    keywords = RULES.get(kind)
    schema: Schema = {}
    for rule, value in rules.ListFields():
        if kind == "string" and rule.name == "not_contains":
            # One character as a pattern, the form tools know best; else "not" of a string
            # schema, so that null (read as absent) still passes.
            if len(value) == 1 and "pattern" not in schema:
                schema["pattern"] = f"^[^{_literal(value)}]*$"
            else:
                schema["not"] = {"type": "string", "pattern": _literal(value)}
        elif keywords is not None and rule.name in keywords:
            if keywords[rule.name]:
                schema[keywords[rule.name]] = value
        else:
            raise ValueError(f"{full}: (buf.validate.field).{kind}.{rule.name} has no JSON Schema")
    return schema


def _with_rules(schema: Schema, field: descriptor_pb2.FieldDescriptorProto, full: str) -> Schema:
    """A request field's schema with its buf.validate rules."""
    rules = _rules(field)
    if rules.required and field.type == FD.TYPE_STRING and not field.proto3_optional:
        schema["minLength"] = 1  # "" is unset in proto3
    kind = rules.WhichOneof("type")
    if kind is not None:
        schema |= _kind_schema(kind, getattr(rules, kind), full)
    for cel in rules.cel:
        unique = _UNIQUE_CEL.search(cel.expression)
        if field.label != FD.LABEL_REPEATED or unique is None:
            raise ValueError(f"{full}: CEL rule {cel.id!r} has no JSON Schema")
        schema[UNIQUE_BY] = unique.group(2)
    return schema


class Builder:
    """Builds the document; message schemas go to components, one per message and view."""

    def __init__(self, descriptors: Descriptors) -> None:
        self.d = descriptors
        self.schemas: dict[str, Schema] = {}
        self.request_types: set[str] = set()
        self.errors: dict[str, httpapi.Error] = {}  # every error word some operation answers

    # Schemas. The input view requires REQUIRED fields and adds the request rules; the output
    # view requires every field (the gateway always prints every key). OUTPUT_ONLY fields are
    # readOnly in both: a request need not send them, and tools leave them out of request
    # models; one that is sent is ignored but still parsed, so it keeps its type.

    def component(self, type_name: str, output: bool) -> str:
        """The name of the message's schema in components, built on first use."""
        short = type_name.rsplit(".", 1)[-1]
        name = short if output or type_name in self.request_types else f"{short}Input"
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages refer to it
            self.schemas[name] = self.message_schema(type_name, output)
        return name

    def ref(self, type_name: str, output: bool) -> Schema:
        if type_name in WELL_KNOWN:
            return dict(WELL_KNOWN[type_name])
        return {"$ref": f"#/components/schemas/{self.component(type_name, output)}"}

    def message_schema(
        self, type_name: str, output: bool, skip: frozenset[str] = frozenset()
    ) -> Schema:
        message = self.d.messages[type_name]
        properties: Schema = {}
        required: list[str] = []
        for field in message.field:
            if field.name in skip:
                continue
            behaviors = _behaviors(field)
            prop = self.field_schema(type_name, field, output)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                prop["readOnly"] = True
            if output or field_behavior_pb2.REQUIRED in behaviors or _rules(field).required:
                required.append(field.name)
            else:
                prop = _or_null(prop)
            properties[field.name] = prop
        schema: Schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        return _described(schema, self.d.comments.get(type_name, ""))

    def field_schema(
        self, type_name: str, field: descriptor_pb2.FieldDescriptorProto, output: bool
    ) -> Schema:
        full = f"{type_name}.{field.name}"[1:]
        entry = self.d.messages.get(field.type_name)
        if entry is not None and entry.options.map_entry:
            _, value = entry.field
            schema: Schema = {"type": "object", "additionalProperties": self.value(value, output)}
        elif field.label == FD.LABEL_REPEATED:
            schema = {"type": "array", "items": self.value(field, output)}
        else:
            schema = self.value(field, output)
        schema |= JSON_TYPES.get(full, {})
        if not output:
            schema = _with_rules(schema, field, full)
        return _described(schema, self.d.comments.get(f"{type_name}.{field.name}", ""))

    def value(self, field: descriptor_pb2.FieldDescriptorProto, output: bool) -> Schema:
        """One value of the field: a scalar, an enum word or a message."""
        if field.type == FD.TYPE_MESSAGE:
            return self.ref(field.type_name, output)
        if field.type == FD.TYPE_ENUM:
            enum = self.d.enums[field.type_name]
            # The zero value (*_UNSPECIFIED) means "not set": never valid, never printed.
            return {"type": "string", "enum": [v.name for v in enum.value if v.number != 0]}
        return dict(SCALARS[field.type])

    # Operations.

    def operation(
        self,
        service_name: str,
        method: descriptor_pb2.MethodDescriptorProto,
        answer: httpapi.Method,
        rule: httpapi.Binding,
    ) -> tuple[str, str, Schema]:
        """(path, method, operation) for one HTTP rule of the method."""
        verb, template = rule.verb, rule.template
        path, path_fields = _path(template, method.name)
        request = self.d.messages[method.input_type]
        fields = {f.name: f for f in request.field}
        for name in path_fields:
            if name not in fields:
                raise ValueError(f"{method.name}: {template} names {name}, not a request field")

        operation: Schema = {
            "operationId": method.name,
            "tags": [service_name.rsplit(".", 1)[-1]],
        }
        operation = _described(operation, self.d.comments.get(f"{service_name}.{method.name}", ""))
        parameters = [
            self.parameter(method.input_type, fields[name], "path") for name in path_fields
        ]
        if rule.body == "*":
            self.request_types.add(method.input_type)
            body = (
                self.message_schema(method.input_type, False, frozenset(path_fields))
                if path_fields
                else self.ref(method.input_type, False)
            )
        elif rule.body:
            body = self.field_schema(method.input_type, fields[rule.body], False)
        else:
            body = None
        # Fields neither in the path nor in the body are read from the query.
        in_body = set(fields) if rule.body == "*" else {rule.body} - {""}
        parameters += [
            self.parameter(method.input_type, field, "query")
            for field in request.field
            if field.name not in in_body
            and field.name not in path_fields
            and field_behavior_pb2.OUTPUT_ONLY not in _behaviors(field)
        ]
        if parameters:
            operation["parameters"] = parameters
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }

        response = self.d.messages[method.output_type]
        if rule.response_body:
            field = next(f for f in response.field if f.name == rule.response_body)
            result = self.field_schema(method.output_type, field, True)
        else:
            result = self.ref(method.output_type, True)
        # The server sends the success status and Location (httpapi.success_metadata).
        success = answer.success_status
        responses: Schema = {
            str(success): {
                "description": "Created." if success == 201 else "OK.",
                "content": {"application/json": {"schema": result}},
            }
        }
        if answer.location:
            responses[str(success)]["headers"] = _header(
                "Location", "Where the new resource is read."
            )
        by_status: dict[int, list[httpapi.Error]] = {}
        for error in answer.errors(rule):
            by_status.setdefault(error.status, []).append(error)
            self.errors[error.word] = error
        for status, errors in by_status.items():
            responses[str(status)] = (
                {"$ref": f"#/components/responses/{errors[0].word}"}
                if len(errors) == 1
                else _error_response(status, errors)
            )
        operation["responses"] = responses
        if answer.scope:
            operation["security"] = [{SECURITY_SCHEME: [answer.scope]}]
        return path, verb, operation

    def parameter(
        self, type_name: str, field: descriptor_pb2.FieldDescriptorProto, where: str
    ) -> Schema:
        if field.type == FD.TYPE_MESSAGE and field.type_name not in WELL_KNOWN:
            raise ValueError(
                f"{field.name}: message fields as {where} parameters are not supported"
            )
        schema = self.field_schema(type_name, field, False)
        parameter = _described({"name": field.name, "in": where}, schema.pop("description", ""))
        if where == "path" or field_behavior_pb2.REQUIRED in _behaviors(field):
            parameter["required"] = True
        return parameter | {"schema": schema}


def _path(template: str, method: str) -> tuple[str, list[str]]:
    """An HTTP rule's path template as an OpenAPI path, and the fields it binds."""
    fields: list[str] = []

    def variable(match: re.Match[str]) -> str:
        name, pattern = match.group(1), match.group(2)
        if pattern not in (None, "*"):
            raise ValueError(f"{method}: path segment pattern {{{name}={pattern}}} not supported")
        fields.append(name)
        return "{" + name + "}"

    return re.sub(r"\{([a-z_][a-z0-9_]*)(?:=([^}]*))?\}", variable, template), fields


def _header(name: str, description: str) -> Schema:
    return {name: {"description": description, "required": True, "schema": {"type": "string"}}}


def _error_response(status: int, errors: list[httpapi.Error]) -> Schema:
    """The response of one status, for the error words given."""
    words = [error.word for error in errors]
    response: Schema = {
        "description": " ".join(f"`{error.word}`: {error.meaning}" for error in errors),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {"properties": {"error": {"enum": words}}},
                    ]
                }
            }
        },
    }
    if status in ERROR_HEADERS:
        response["headers"] = _header(*ERROR_HEADERS[status])
    return response


def build(files: descriptor_pb2.FileDescriptorSet) -> Schema:
    """The OpenAPI document of every HTTP rule of package comms.v1's services."""
    descriptors = Descriptors(files)
    builder = Builder(descriptors)
    paths: dict[str, Schema] = {}
    tags: list[Schema] = []
    for service_name, service in descriptors.services():
        comment = descriptors.comments.get(service_name, "")
        tags.append({"name": service.name} | ({"description": comment} if comment else {}))
        for method in service.method:
            answer = httpapi.method_of(service_name[1:], method)
            for binding in answer.bindings:  # none: gRPC only
                path, verb, operation = builder.operation(service_name, method, answer, binding)
                if verb in paths.setdefault(path, {}):
                    raise ValueError(f"{verb.upper()} {path} is bound twice")
                paths[path][verb] = operation
    errors = sorted(builder.errors.values(), key=lambda error: error.status)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "comms",
            "version": PACKAGE.rsplit(".", 1)[-1],
            "description": (
                "The HTTP/JSON API of the comms service, transcoded by its gateway into gRPC "
                f"({PACKAGE}). Generated from the proto files; do not edit. Every error is "
                "application/json {error, message}."
            ),
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": {
                **dict(sorted(builder.schemas.items())),
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string", "description": "A stable snake_case code."},
                        "message": {
                            "type": "string",
                            "description": "What is wrong, for a person.",
                        },
                    },
                    "required": ["error", "message"],
                },
            },
            "responses": {e.word: _error_response(e.status, [e]) for e in errors},
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An OAuth 2 access token; each operation names its scope.",
                }
            },
        },
    }


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    return json.dumps(build(files), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comms.openapi", description=__doc__.split("\n")[0]
    )
    parser.add_argument("descriptor_set", nargs="?", type=Path, help="default: the built one")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    source: Path = args.descriptor_set or gateway.descriptor_path()
    text = render(descriptor_pb2.FileDescriptorSet.FromString(source.read_bytes()))
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
