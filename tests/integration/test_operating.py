"""What an operator sees of each call, through a real Envoy: request ids end to end, the
server's log line, Envoy's access log line, the metrics, and OpenTelemetry spans."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from comms import db
from comms.server import create_server
from comms.v1 import sequences_pb2 as pb
from comms.v1 import sequences_pb2_grpc as pb_grpc
from tests.integration.conftest import Envoy, gateway_settings
from tests.tokens import Keys

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
CREATE = "comms.v1.SequenceService/CreateSequence"
GET = "comms.v1.SequenceService/GetSequence"


class Traced:
    """A server traced into memory, Envoy in front of it, its access log in a file."""

    def __init__(self, tmp: Path, keys: Keys) -> None:
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.database = db.prepare(f"sqlite:///{tmp / 'comms.db'}")
        self.server = create_server(
            "127.0.0.1:0", self.database, keys.verifier(), workers=4, tracer_provider=provider
        )
        self.access_log = tmp / "access.log"
        self.envoy = Envoy.start(gateway_settings(tmp, self.server.port), self.access_log)
        self.token = keys.token()
        self.envoy.default_headers["Authorization"] = f"Bearer {self.token}"
        self.direct = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.sequences = pb_grpc.SequenceServiceStub(self.direct)
        self.auth = [("authorization", f"Bearer {self.token}")]

    def access_line(self, request_id: str) -> dict[str, Any]:
        """Envoy's access log line for the request (written as the stream ends)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in self.access_log.read_text().splitlines():
                record = json.loads(line)
                if record["request_id"] == request_id:
                    return dict(record)
            time.sleep(0.02)
        raise AssertionError(f"no access log line for {request_id}")

    def stop(self) -> None:
        self.direct.close()
        self.envoy.stop()
        self.server.stop(1)
        self.database.close_all()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Traced]:
    stack = Traced(tmp_path_factory.mktemp("traced"), keys)
    yield stack
    stack.stop()


@pytest.fixture
def calls(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="comms.calls")
    return caplog


def _call_record(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    fields = ("method", "grpc_code", "http_status", "brand", "subject")
    assert record.getMessage() == "call" and record.duration_ms >= 0  # type: ignore[attr-defined]
    return {name: getattr(record, name) for name in fields}


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


BODY = {
    "brand_id": "brand_ops",
    "name": "Secret name 7f3a",
    "description": "Secret description 9c1e",
    "steps": [
        {"position": 0, "channel": "email", "template_key": "secret-key-4d2b", "delay_minutes": 0}
    ],
}


def test_a_callers_request_id_is_kept_logged_and_returned(
    traced: Traced, calls: pytest.LogCaptureFixture
) -> None:
    answer = traced.envoy.post(BODY, headers={"X-Request-Id": "caller-id-1"})
    assert (answer.status, answer.headers["x-request-id"]) == (201, "caller-id-1")
    assert _call_record(calls, "caller-id-1") == {
        "method": CREATE,
        "grpc_code": "OK",
        "http_status": 201,
        "brand": "brand_ops",
        "subject": "tester",
    }
    line = traced.access_line("caller-id-1")
    assert int(line.pop("duration_ms")) >= 0 and int(line.pop("upstream_ms")) >= 0
    assert line.pop("time").endswith("Z") and line.pop("upstream_host").startswith("127.0.0.1:")
    assert line.pop("bytes_sent") > 0 and line.pop("bytes_received") == len(json.dumps(BODY))
    assert line == {
        "source": "envoy",
        "request_id": "caller-id-1",
        "caller": "http",
        "method": "POST",
        "path": "/v1/sequences",
        "status": 201,
        "grpc_status": 0,
        "response_flags": "-",
    }


def test_envoy_makes_an_id_for_a_caller_without_one_and_logs_the_original_method(
    traced: Traced, calls: pytest.LogCaptureFixture
) -> None:
    path = f"/v1/sequences/{uuid.uuid4()}"
    answer = traced.envoy.request("GET", path)
    request_id = answer.headers["x-request-id"]
    assert answer.status == 404 and UUID.fullmatch(request_id), answer.headers
    assert _call_record(calls, request_id) == {
        "method": GET,
        "grpc_code": "NOT_FOUND",
        "http_status": None,
        "brand": None,
        "subject": "tester",
    }
    line = traced.access_line(request_id)
    # The caller's GET and path, not the transcoder's POST /comms.v1.SequenceService/GetSequence;
    # the status the client got and the server's gRPC status (NOT_FOUND, 5).
    assert (line["method"], line["path"], line["status"], line["grpc_status"]) == (
        "GET",
        path,
        404,
        5,
    )


def test_envoys_own_replies_carry_an_id_and_no_grpc_status(traced: Traced) -> None:
    answer = traced.envoy.request("GET", "/nowhere", headers={"X-Request-Id": "lost-1"})
    assert (answer.status, answer.headers["x-request-id"]) == (404, "lost-1")
    line = traced.access_line("lost-1")
    assert (line["method"], line["path"], line["status"], line["grpc_status"]) == (
        "GET",
        "/nowhere",
        404,
        None,
    )
    assert line["upstream_host"] is None


def test_a_direct_grpc_caller_gets_an_id_in_the_trailing_metadata(
    traced: Traced, calls: pytest.LogCaptureFixture
) -> None:
    request = pb.CreateSequenceRequest(brand_id="brand_ops", name="Direct")
    _, call = traced.sequences.CreateSequence.with_call(request, metadata=traced.auth)
    trailing = dict(call.trailing_metadata())
    assert UUID.fullmatch(trailing["x-request-id"]), trailing
    assert _call_record(calls, trailing["x-request-id"])["grpc_code"] == "OK"

    # Errors keep their details beside the id; a caller's own id is kept.
    with pytest.raises(grpc.RpcError) as refused:
        traced.sequences.GetSequence(
            pb.GetSequenceRequest(id="x"), metadata=[*traced.auth, ("x-request-id", "mine-2")]
        )
    trailing = dict(refused.value.trailing_metadata())  # type: ignore[attr-defined]
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert trailing["x-request-id"] == "mine-2" and "grpc-status-details-bin" in trailing
    assert _call_record(calls, "mine-2")["grpc_code"] == "NOT_FOUND"

    with pytest.raises(grpc.RpcError) as anonymous:
        traced.sequences.GetSequence(pb.GetSequenceRequest(id="x"))
    trailing = dict(anonymous.value.trailing_metadata())  # type: ignore[attr-defined]
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert _call_record(calls, trailing["x-request-id"])["subject"] is None
    assert "www-authenticate" in trailing


def test_an_unusable_request_id_is_replaced(traced: Traced) -> None:
    for given in ["", "x" * 201]:
        request = pb.CreateSequenceRequest(brand_id="brand_ops", name="Id")
        metadata = [*traced.auth, ("x-request-id", given)]
        _, call = traced.sequences.CreateSequence.with_call(request, metadata=metadata)
        assert UUID.fullmatch(dict(call.trailing_metadata())["x-request-id"]), given


def test_through_envoy_over_grpc_the_id_is_envoys_and_the_log_line_says_grpc(
    traced: Traced,
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{traced.envoy.settings.http_port}") as channel:
        stub = pb_grpc.SequenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetSequence(pb.GetSequenceRequest(id="x"), metadata=traced.auth)
    request_id = dict(refused.value.trailing_metadata())["x-request-id"]  # type: ignore[attr-defined]
    line = traced.access_line(request_id)
    assert (line["caller"], line["method"], line["status"], line["grpc_status"]) == (
        "grpc",
        "POST",
        200,
        5,
    )
    assert line["path"] == f"/{GET}"


def test_no_log_line_holds_a_name_a_description_or_a_template_key(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = traced.envoy.post(BODY, headers={"X-Request-Id": "private-1"})
    refused = traced.envoy.post(BODY | {"brand_id": ""}, headers={"X-Request-Id": "private-2"})
    assert (answer.status, refused.status) == (201, 422)
    traced.access_line("private-2")
    logged = caplog.text + "".join(map(str, (vars(r) for r in caplog.records)))
    logged += traced.access_log.read_text()
    assert "private-1" in logged and "private-2" in logged
    for secret in ["Secret name 7f3a", "Secret description 9c1e", "secret-key-4d2b"]:
        assert secret not in logged


def test_each_call_is_counted_by_method_and_code_with_its_latency(traced: Traced) -> None:
    ok, refused = (
        _sample("comms_rpc_requests_total", method=CREATE, code=c)
        for c in ("OK", "INVALID_ARGUMENT")
    )
    timed = _sample("comms_rpc_duration_seconds_count", method=CREATE, code="OK")
    batches = _sample("comms_store_batch_size_count")
    for _ in range(3):
        assert traced.envoy.post(BODY).status == 201
    assert traced.envoy.post(BODY | {"name": ""}).status == 422
    assert _sample("comms_rpc_requests_total", method=CREATE, code="OK") == ok + 3
    assert (
        _sample("comms_rpc_requests_total", method=CREATE, code="INVALID_ARGUMENT") == refused + 1
    )
    assert _sample("comms_rpc_duration_seconds_count", method=CREATE, code="OK") == timed + 3
    # Each create alone (one after the other): three batches of one.
    assert _sample("comms_store_batch_size_count") == batches + 3
    assert _sample("comms_rpc_in_flight", method=CREATE) == 0


def test_a_replayed_create_is_counted(traced: Traced) -> None:
    before = _sample("comms_idempotent_replays_total")
    key = {"Idempotency-Key": f"replay-{uuid.uuid4()}"}
    first, again = traced.envoy.post(BODY, headers=key), traced.envoy.post(BODY, headers=key)
    assert (first.status, again.status, again.headers["idempotent-replayed"]) == (201, 201, "true")
    assert _sample("comms_idempotent_replays_total") == before + 1


def test_calls_refused_for_the_in_flight_limit_are_counted_as_shed(
    tmp_path: Path, keys: Keys
) -> None:
    """One call holds the only place (its commit waits on the writer lock, held here); the
    next three are refused at once with RESOURCE_EXHAUSTED, each counted as shed."""
    database = db.prepare(f"sqlite:///{tmp_path / 'comms.db'}")
    server = create_server("127.0.0.1:0", database, keys.verifier(), workers=1, max_in_flight=1)
    lock = os.open(f"{tmp_path / 'comms.db'}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    metadata = [("authorization", f"Bearer {keys.token()}")]
    shed = _sample("comms_rpc_shed_total", method=CREATE)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.SequenceServiceStub(channel)
            request = pb.CreateSequenceRequest(brand_id="b", name="held")
            fcntl.flock(lock, fcntl.LOCK_EX)
            held = stub.CreateSequence.future(request, metadata=metadata)
            while _sample("comms_rpc_in_flight", method=CREATE) < 1:
                time.sleep(0.01)
            codes = []
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.CreateSequence(request, metadata=metadata, timeout=10)
                codes.append(refused.value.code())  # type: ignore[attr-defined]
            fcntl.flock(lock, fcntl.LOCK_UN)
            assert held.result(timeout=10).name == "held"
    finally:
        os.close(lock)
        server.stop(1)
        database.close_all()
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    assert _sample("comms_rpc_shed_total", method=CREATE) == shed + 3


def test_a_traced_http_call_makes_a_server_span_child_of_the_callers_trace(
    traced: Traced,
) -> None:
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    traced.spans.clear()
    answer = traced.envoy.request(
        "GET",
        f"/v1/sequences/{uuid.uuid4()}",
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert answer.status == 404
    (span,) = [s for s in traced.spans.get_finished_spans() if s.name == f"/{GET}"]
    assert span.context is not None and span.parent is not None
    assert (f"{span.context.trace_id:032x}", f"{span.parent.span_id:016x}") == (trace_id, parent_id)
    assert span.kind.name == "SERVER" and span.parent.is_remote


def test_an_untraced_call_starts_a_trace_of_its_own(traced: Traced) -> None:
    traced.spans.clear()
    traced.sequences.CreateSequence(
        pb.CreateSequenceRequest(brand_id="b", name="t"), metadata=traced.auth
    )
    (span,) = [s for s in traced.spans.get_finished_spans() if s.name == f"/{CREATE}"]
    assert span.parent is None


def test_a_store_that_cannot_be_reached_is_counted_and_the_pool_size_shown(keys: Keys) -> None:
    database = db.open_database("postgresql://nobody@127.0.0.1:1/none", max_connections=7)
    server = create_server("127.0.0.1:0", database, keys.verifier(), workers=2)
    assert _sample("comms_store_connections_max") == 7
    errors = _sample("comms_store_errors_total", error="OperationalError")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.SequenceServiceStub(channel)
            metadata = [("authorization", f"Bearer {keys.token()}")]
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetSequence(pb.GetSequenceRequest(id=str(uuid.uuid4())), metadata=metadata)
    finally:
        server.stop(1)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert _sample("comms_store_errors_total", error="OperationalError") == errors + 1
    assert _sample("comms_store_connections_in_use") == 0
