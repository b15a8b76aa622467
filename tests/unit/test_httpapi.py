"""comms.httpapi, the one table of the API's HTTP facts, and every copy rendered from it: the
gateway's routes, 405 answers and Lua tables, the OpenAPI document, the server's success
headers and the docs' error tables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from comms import gateway, httpapi, openapi
from comms.config import Settings
from comms.v1 import options_pb2
from comms.v1 import sequences_pb2 as pb

ROOT = Path(__file__).parents[2]
DOC: dict[str, Any] = json.loads(gateway.openapi_path().read_text())
CREATE = "/comms.v1.SequenceService/CreateSequence"
LUA = "envoy.filters.http.lua"


def _files() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(gateway.descriptor_path().read_bytes())


def _rpc_routes(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in routes if r.get("metadata", {}).get("filter_metadata", {}).get(LUA)]


def _verb(route: dict[str, Any]) -> str:
    (header,) = route["match"]["headers"]
    assert header["name"] == ":method"
    verb: str = header["string_match"]["exact"]
    return verb


def _matches(route: dict[str, Any], path: str) -> bool:
    """Whether the route's path match takes the path (RE2 and Python agree on these)."""
    match = route["match"]
    if "path" in match:
        return bool(match["path"] == path)
    return re.fullmatch(match["safe_regex"]["regex"], path) is not None


def _example(template: str) -> str:
    return re.sub(r"\{[^}]*\}", "0199", template)


def test_every_method_declares_its_scope_and_http_answer() -> None:
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            options = method.GetOptions()
            assert options.Extensions[httpapi.REQUIRED_SCOPE], method.name
            assert options.HasExtension(httpapi.HTTP_ANSWER), method.name
    assert [m.name for m in httpapi.METHODS.values()] == [
        "CreateSequence",
        "GetSequence",
        "ListSequences",
        "UpdateSequence",
        "ActivateSequence",
        "PauseSequence",
        "ResumeSequence",
        "ArchiveSequence",
        "DeleteSequence",
        "UndeleteSequence",
        "ListSequenceRevisions",
        "GetSequenceRevision",
        "GetLiveness",
        "GetReadiness",
    ]
    create = httpapi.METHODS[CREATE]
    assert (create.success_status, create.location, create.listed) == (
        201,
        "/v1/sequences/{id}",
        ("idempotency_key_reused",),
    )


def test_only_the_health_probes_are_public() -> None:
    public = {m.grpc_path: (m.scope, m.bindings) for m in httpapi.METHODS.values() if m.public}
    assert public == {
        "/comms.v1.HealthService/GetLiveness": ("", (httpapi.Binding("get", "/healthz", "", ""),)),
        "/comms.v1.HealthService/GetReadiness": ("", (httpapi.Binding("get", "/readyz", "", ""),)),
    }
    # Neither can answer what only a token brings.
    words = {e.word for m in httpapi.METHODS.values() if m.public for e in m.errors(m.bindings[0])}
    assert not words & {"unauthenticated", "permission_denied"}


def test_a_public_method_declares_no_scope() -> None:
    method = descriptor_pb2.MethodDescriptorProto(name="Both")
    method.options.Extensions[httpapi.REQUIRED_SCOPE] = "sequences:read"
    method.options.Extensions[httpapi.PUBLIC] = True
    with pytest.raises(ValueError, match="Both: a public method declares no required_scope"):
        httpapi.method_of("comms.v1.X", method)


def test_the_vocabulary() -> None:
    table = {e.word: (e.status, e.grpc_codes) for e in httpapi.ERRORS.values()}
    assert table == {
        "bad_request": (400, ()),
        "unauthenticated": (401, (16,)),
        "permission_denied": (403, (7,)),
        "not_found": (404, (5,)),
        "method_not_allowed": (405, ()),
        "request_timeout": (408, ()),
        "already_exists": (409, (6,)),
        "failed_precondition": (409, (9,)),
        "etag_mismatch": (412, (10,)),
        "payload_too_large": (413, ()),
        "unsupported_media_type": (415, ()),
        "validation_error": (422, (3,)),
        "idempotency_key_reused": (422, ()),
        "headers_too_large": (431, ()),
        "internal": (500, ()),
        "not_implemented": (501, (12,)),
        "unavailable": (503, (1, 8, 14)),
        "deadline_exceeded": (504, (4,)),
    }
    assert all(e.meaning and e.reach for e in httpapi.ERRORS.values())


def test_the_lua_table_is_the_vocabulary() -> None:
    assert gateway.lua_errors() == {
        "1": {"status": 503, "error": "unavailable"},
        "3": {"status": 422, "error": "validation_error"},
        "4": {"status": 504, "error": "deadline_exceeded"},
        "5": {"status": 404, "error": "not_found"},
        "6": {"status": 409, "error": "already_exists"},
        "7": {"status": 403, "error": "permission_denied"},
        "8": {"status": 503, "error": "unavailable"},
        "9": {"status": 409, "error": "failed_precondition"},
        "10": {"status": 412, "error": "etag_mismatch"},
        "12": {"status": 501, "error": "not_implemented"},
        "14": {"status": 503, "error": "unavailable"},
        "16": {"status": 401, "error": "unauthenticated"},
    }
    lua = (gateway.GATEWAY_DIR / "comms.lua").read_text()
    assert "GRPC_TO_HTTP" not in lua
    # The words comms.lua writes itself.
    words = re.search(r'local INVALID, TOO_LARGE, INTERNAL = "(\w+)", "(\w+)", "(\w+)"', lua)
    assert words is not None
    assert [httpapi.ERRORS[word].status for word in words.groups()] == [422, 413, 500]


MOVES = ("activate", "pause", "resume", "archive", "undelete")


def test_the_rendered_routes_follow_the_http_rules(tmp_path: Path) -> None:
    config = yaml.safe_load(gateway.render(Settings(data_dir=tmp_path)))
    listeners = config["static_resources"]["listeners"]
    (listener,) = [each for each in listeners if each["name"] == "public"]  # not "operator"
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    rpc = _rpc_routes(routes)
    assert rpc == _rpc_routes(gateway.api_routes())
    # One route per HTTP rule, taking exactly that verb and that path.
    for file in _files().file:
        for method in (m for s in file.service for m in s.method if file.package == "comms.v1"):
            rule = method.options.Extensions[annotations_pb2.http]
            verb = rule.WhichOneof("pattern")
            path = _example(getattr(rule, verb))
            taking = [r for r in rpc if _verb(r) == verb.upper() and _matches(r, path)]
            assert len(taking) == 1, method.name
    assert [
        (_verb(r), r["match"].get("path") or r["match"]["safe_regex"]["regex"]) for r in rpc
    ] == [
        ("POST", "/v1/sequences"),
        ("GET", "/v1/sequences/[^/:]+"),
        ("GET", "/v1/sequences"),
        ("PATCH", "/v1/sequences/[^/:]+"),
        ("POST", "/v1/sequences/[^/:]+:activate"),
        ("POST", "/v1/sequences/[^/:]+:pause"),
        ("POST", "/v1/sequences/[^/:]+:resume"),
        ("POST", "/v1/sequences/[^/:]+:archive"),
        ("DELETE", "/v1/sequences/[^/:]+"),
        ("POST", "/v1/sequences/[^/:]+:undelete"),
        ("GET", "/v1/sequences/[^/:]+/revisions"),
        ("GET", "/v1/sequences/[^/:]+/revisions/[^/:]+"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    ]
    # A custom method's path is its own route's alone, not the sequence's.
    taking = [r for r in rpc if _matches(r, "/v1/sequences/0199:activate")]
    assert [(_verb(r), r["match"]["safe_regex"]["regex"]) for r in taking] == [
        ("POST", "/v1/sequences/[^/:]+:activate")
    ]
    # The Lua metadata: every route has the error table; only create requires a list.
    for route in rpc:
        lua = route["metadata"]["filter_metadata"][LUA]
        assert lua["rpc"] is True and lua["max_body_bytes"] == gateway.MAX_BODY_BYTES
        assert lua["errors"] == gateway.lua_errors()
        create_route = route["match"].get("path") == "/v1/sequences" and _verb(route) == "POST"
        assert lua.get("list_required") == (True if create_route else None), route
        followed = create_route or _verb(route) == "PATCH"  # the bodies with steps
        assert lua.get("list") == ("steps" if followed else None), route
    create, get, list_ = (r["metadata"]["filter_metadata"][LUA] for r in rpc[:3])
    assert create["fields"]["brandId"] == {"name": "brand_id", "rule": "must be a string"}
    assert "fields" not in get and set(list_["fields"]) == {
        "brand_id",
        "page_size",
        "page_token",
        "status",
        "show_deleted",
    }
    # One 405 per path, after every API route, with the path's verbs.
    refused = [r for r in routes if r.get("direct_response", {}).get("status") == 405]
    allow = {
        r["match"].get("path") or r["match"]["safe_regex"]["regex"]: r["response_headers_to_add"][
            0
        ]["header"]["value"]
        for r in refused
    }
    assert allow == {
        "/v1/sequences": "GET, POST",
        "/v1/sequences/[^/:]+": "DELETE, GET, PATCH",
        **{f"/v1/sequences/[^/:]+:{verb}": "POST" for verb in MOVES},
        "/v1/sequences/[^/:]+/revisions": "GET",
        "/v1/sequences/[^/:]+/revisions/[^/:]+": "GET",
        "/healthz": "GET",
        "/readyz": "GET",
        "/openapi.json": "GET, HEAD",
        **dict.fromkeys(gateway.DOCS, "GET, HEAD"),
    }
    assert routes.index(refused[0]) > routes.index(rpc[-1])
    # Local replies name their words from the table (an unknown ${word_...} fails to render).
    replies = (gateway.GATEWAY_DIR / "envoy.yaml.in").read_text().split("local_reply_config:")[1]
    words = re.findall(r"error: ([^,]+),", replies)
    assert len(words) == 13 and all(re.fullmatch(r"\$\{word_\w+\}", w) for w in words)


def test_adding_a_method_adds_its_route_405_and_operation() -> None:
    files = _files()
    service = next(s for f in files.file for s in f.service if s.name == "SequenceService")
    noop = service.method.add()
    noop.CopyFrom(next(m for m in service.method if m.name == "GetSequence"))
    noop.name = "NoopSequence"
    rule = noop.options.Extensions[annotations_pb2.http]
    rule.Clear()
    rule.post, rule.body = "/v1/sequences/{id}:noop", "*"
    answer = noop.options.Extensions[httpapi.HTTP_ANSWER]
    answer.errors.append(options_pb2.failed_precondition)

    methods = httpapi.methods(files)
    routes = gateway.api_routes(methods)
    path = "/v1/sequences/0199:noop"
    assert [_verb(r) for r in _rpc_routes(routes) if _matches(r, path)] == ["POST"]
    refused = [r for r in routes if "direct_response" in r and _matches(r, path)]
    assert [r["response_headers_to_add"][0]["header"]["value"] for r in refused] == ["POST"]
    # The routes of the sequence's own path do not take the custom method's path.
    on_sequence = [_verb(r) for r in _rpc_routes(routes) if _matches(r, "/v1/sequences/0199")]
    assert on_sequence == ["GET", "PATCH", "DELETE"]

    operation = openapi.build(files)["paths"]["/v1/sequences/{id}:noop"]["post"]
    assert operation["operationId"] == "NoopSequence"
    assert operation["responses"]["409"] == {"$ref": "#/components/responses/failed_precondition"}
    # Get's not_found (copied), the listed 409, and 413/415 since it reads a body.
    assert [
        status for status in operation["responses"] if status in ("404", "409", "413", "415")
    ] == ["404", "409", "413", "415"]


def test_a_listed_word_must_be_listed_reach() -> None:
    files = _files()
    method = next(
        m for f in files.file for s in f.service for m in s.method if m.name == "GetSequence"
    )
    method.options.Extensions[httpapi.HTTP_ANSWER].errors.append(options_pb2.internal)
    with pytest.raises(ValueError, match="GetSequence: internal is answered by every method"):
        httpapi.methods(files)
    method.options.ClearExtension(httpapi.HTTP_ANSWER)
    with pytest.raises(ValueError, match="GetSequence: an HTTP rule needs"):
        httpapi.methods(files)


def test_the_openapi_responses_are_the_table() -> None:
    operations = {op["operationId"]: op for ops in DOC["paths"].values() for op in ops.values()}
    for method in httpapi.METHODS.values():
        (binding,) = method.bindings
        responses = operations[method.name]["responses"]
        words: dict[str, list[str]] = {}
        for status, response in list(responses.items())[1:]:
            if "$ref" in response:
                name = response["$ref"].rsplit("/", 1)[-1]
                response = DOC["components"]["responses"][name]
            schema = response["content"]["application/json"]["schema"]
            words[status] = schema["allOf"][1]["properties"]["error"]["enum"]
        expected: dict[str, list[str]] = {}
        for error in method.errors(binding):
            expected.setdefault(str(error.status), []).append(error.word)
        assert words == expected, method.name
        assert next(iter(responses)) == str(method.success_status)
    assert (
        operations["CreateSequence"]["responses"]["201"]["headers"]["Location"]["required"] is True
    )


def test_the_success_metadata() -> None:
    sequence = pb.Sequence(id="0199")
    assert httpapi.success_metadata(CREATE, sequence) == (
        ("x-http-code", "201"),
        ("location", "/v1/sequences/0199"),
    )
    assert httpapi.success_metadata("/comms.v1.SequenceService/GetSequence", sequence) == ()


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_the_docs_error_tables_are_the_table(doc: str) -> None:
    text = (ROOT / doc).read_text()
    table = text.split("| status | `error` | when |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| `(\w+)` \|", table, re.MULTILINE)
    answered = {
        (str(e.status), e.word)
        for method in httpapi.METHODS.values()
        for binding in method.bindings
        for e in method.errors(binding)
    }
    assert len(rows) == len(set(rows))
    assert set(rows) == answered
