"""Requests whose bytes do not parse: INVALID_ARGUMENT naming the field, not INTERNAL.

protobuf refuses a string field that is not UTF-8. The gateway's transcoder percent-decodes
paths and query strings into string fields unchecked (GET /v1/sequences/%FF), and a native
gRPC client can send any bytes, so grpcio's deserializer would fail, log a traceback and
answer INTERNAL (HTTP 500). Here the failure becomes a request that the handler refuses,
after the token check, like any other broken rule."""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from comms.interceptors import UnaryWrapper, unary_handler
from comms.service import invalid_argument
from comms.validation import FieldViolation


class Unparsable(NamedTuple):
    """What the deserializer hands on instead of a request it could not parse."""

    violation: FieldViolation


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def invalid_utf8_field(data: bytes, message: Descriptor, prefix: str = "") -> str | None:
    """The path (steps[2].template_key) of the first string field in data, a serialized
    message, whose bytes are not UTF-8; None if there is none."""
    seen: dict[int, int] = {}  # occurrences of each repeated field, for its index
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, at = _varint(data, at)
            continue
        if wire_type in (1, 5):
            at += 8 if wire_type == 1 else 4
            continue
        if wire_type != 2:
            return None  # groups: this API has none
        size, at = _varint(data, at)
        chunk, at = data[at : at + size], at + size
        field = message.fields_by_number.get(number)
        if field is None:
            continue
        path = prefix + field.name
        if field.is_repeated:
            seen[number] = seen.get(number, -1) + 1
            path += f"[{seen[number]}]"
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                chunk.decode()
            except UnicodeDecodeError:
                return path
        elif field.message_type is not None:
            found = invalid_utf8_field(chunk, field.message_type, path + ".")
            if found:
                return found
    return None


def _violation(data: bytes, message: Descriptor) -> FieldViolation:
    try:
        field = invalid_utf8_field(data, message)
    except IndexError:  # cut short
        field = None
    if field is None:
        return FieldViolation("request", "is not a valid serialized protobuf message")
    return FieldViolation(field, "must be valid UTF-8")


class RefuseUnparsable(UnaryWrapper):
    """Wraps each unary method: an unparsable request is INVALID_ARGUMENT. Listed after
    AuthInterceptor, so that the token is still checked first."""

    def wrap(self, handler: Any, method: str) -> Any:
        service, _, name = method.strip("/").rpartition("/")
        try:
            found = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
        except KeyError:
            return handler
        message: Descriptor = found.input_type
        parse, serve = handler.request_deserializer, handler.unary_unary

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError:
                return Unparsable(_violation(data, message))

        def refuse_or_serve(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Unparsable):
                context.abort_with_status(invalid_argument([request.violation]).status)
            return serve(request, context)

        return unary_handler(handler, refuse_or_serve, deserialize)
