"""The HTTP face of the API in one table, read from the proto: each method's HTTP rule
(google.api.http), scope ((comms.v1.required_scope)) and answer ((comms.v1.http_answer)), and
the error vocabulary (comms.v1.ErrorCode and its (comms.v1.error) options). The gateway's routes
and Lua tables, the OpenAPI document, the server's success headers and the auth check read it
here; nothing else restates it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from comms.v1 import health_pb2, options_pb2
from comms.v1 import sequences_pb2 as pb

PACKAGE = "comms.v1"
# The stubs type these extensions as plain fields, which Extensions[] does not take.
REQUIRED_SCOPE: Any = options_pb2.required_scope
HTTP_ANSWER: Any = options_pb2.http_answer
PUBLIC: Any = options_pb2.public
ERROR_INFO: Any = options_pb2.error
Reach = options_pb2.ErrorInfo.Reach

# Sent by the server as metadata; the gateway turns it into the HTTP status (and removes it).
HTTP_CODE_HEADER = "x-http-code"
# Sent with a success that replays an earlier call's stored answer (comms.idempotency).
REPLAYED = ("idempotent-replayed", "true")
# A path template's variable: {id}, or {id=*} (one segment, the only pattern supported); a
# field of a field is named by its path ({sequence.id}).
VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?:=([^}]*))?\}")


@dataclass(frozen=True)
class Error:
    """One word of the `error` member of HTTP error bodies."""

    word: str
    status: int
    grpc_codes: tuple[int, ...]  # google.rpc.Code numbers the gateway maps to this word
    meaning: str
    reach: int  # an ErrorInfo.Reach


def _errors() -> dict[str, Error]:
    table = {}
    for value in options_pb2.ErrorCode.DESCRIPTOR.values:
        if value.number == 0:
            continue
        info = value.GetOptions().Extensions[ERROR_INFO]
        if not info.http_status or not info.reach:
            raise ValueError(f"ErrorCode.{value.name}: (error) needs http_status and reach")
        table[value.name] = Error(
            value.name, info.http_status, tuple(info.grpc_codes), info.meaning, info.reach
        )
    return table


# The vocabulary by word, in the proto's order.
ERRORS = _errors()


@dataclass(frozen=True)
class Binding:
    """One HTTP rule of a method: GET /v1/sequences/{id}, its body field ("*", "" or one)."""

    verb: str  # get, put, post, delete, patch
    template: str
    body: str
    response_body: str  # the response field sent as the body; "" for the whole response

    @property
    def fields(self) -> list[str]:
        """The request fields the path binds."""
        return [match.group(1) for match in VARIABLE.finditer(self.template)]

    def regex(self) -> str:
        """The path as an RE2 regex (Envoy's safe_regex) matching the whole path: a variable
        is one segment without ':', so that /v1/x/{id} does not also take /v1/x/{id}:verb."""
        parts = VARIABLE.split(self.template)
        # split() yields literal, name, pattern, literal, ...
        for name, pattern in zip(parts[1::3], parts[2::3], strict=True):
            if pattern not in (None, "*"):
                raise ValueError(f"{self.template}: {{{name}={pattern}}} is not supported")
        return "[^/:]+".join(re.escape(literal) for literal in parts[0::3])


@dataclass(frozen=True)
class Method:
    """One RPC and everything its HTTP face answers."""

    service: str  # full name, comms.v1.SequenceService
    name: str
    input_type: str  # full name, without the leading dot
    bindings: tuple[Binding, ...]  # none: gRPC only
    scope: str  # "" when the method declares none (then nobody may call it, unless public)
    public: bool  # anyone may call it, without a token
    success_status: int
    location: str  # the Location template of a success, or ""
    listed: tuple[str, ...]  # the REACH_LISTED words it can answer

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.name}"

    def errors(self, binding: Binding) -> list[Error]:
        """Every error this binding can answer, by status then in the proto's order."""
        reaches = {Reach.REACH_GATEWAY, Reach.REACH_METHOD}
        if binding.body:
            reaches.add(Reach.REACH_BODY)
        if self.scope:
            reaches.add(Reach.REACH_SCOPED)
        found = [e for e in ERRORS.values() if e.reach in reaches or e.word in self.listed]
        return sorted(found, key=lambda error: error.status)


def _binding(rule: Any, method: str) -> Binding | None:  # a google.api.HttpRule
    verb = rule.WhichOneof("pattern")
    if verb is None:
        return None
    if verb == "custom":
        raise ValueError(f"{method}: only get, put, post, delete and patch rules are supported")
    return Binding(verb, getattr(rule, verb), rule.body, rule.response_body)


def method_of(service: str, method: descriptor_pb2.MethodDescriptorProto) -> Method:
    """The table's entry for one method of the service (its full name)."""
    options = method.options
    rule = options.Extensions[annotations_pb2.http]
    bindings = [_binding(each, method.name) for each in [rule, *rule.additional_bindings]]
    answer = options.Extensions[HTTP_ANSWER]
    found = tuple(b for b in bindings if b is not None)
    if found and not options.HasExtension(HTTP_ANSWER):
        raise ValueError(f"{method.name}: an HTTP rule needs (comms.v1.http_answer)")
    listed = tuple(options_pb2.ErrorCode.Name(code) for code in answer.errors)
    for word in listed:
        if ERRORS[word].reach != Reach.REACH_LISTED:
            raise ValueError(f"{method.name}: {word} is answered by every method, not listed")
    scope, public = options.Extensions[REQUIRED_SCOPE], options.Extensions[PUBLIC]
    if scope and public:
        raise ValueError(f"{method.name}: a public method declares no required_scope")
    return Method(
        service=service,
        name=method.name,
        input_type=method.input_type.lstrip("."),
        bindings=found,
        scope=scope,
        public=public,
        success_status=answer.success_status or 200,
        location=answer.location,
        listed=listed,
    )


def methods(files: descriptor_pb2.FileDescriptorSet) -> list[Method]:
    """Every method of package comms.v1's services in the descriptor set, in proto order."""
    return [
        method_of(f"{file.package}.{service.name}", method)
        for file in files.file
        if file.package == PACKAGE
        for service in file.service
        for method in service.method
    ]


def _built() -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    for module in (pb, health_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    return files


# Every RPC of the built proto, by its gRPC path (/comms.v1.SequenceService/CreateSequence).
METHODS = {method.grpc_path: method for method in methods(_built())}
# The services those RPCs belong to, in proto order (the gateway transcodes them).
SERVICES = tuple(dict.fromkeys(method.service for method in METHODS.values()))


def success_metadata(grpc_path: str, response: Message) -> tuple[tuple[str, str], ...]:
    """The metadata a success sends for the gateway: the HTTP status when not 200, and the
    Location with the template's {field} parts read from the response."""
    method = METHODS[grpc_path]
    metadata: tuple[tuple[str, str], ...] = ()
    if method.success_status != 200:
        metadata += ((HTTP_CODE_HEADER, str(method.success_status)),)
    if method.location:
        location = VARIABLE.sub(lambda m: str(getattr(response, m.group(1))), method.location)
        metadata += (("location", location),)
    return metadata
