"""The log line formats, request ids and the switch that turns tracing on."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from comms import calls, logs, tracing
from comms.config import ConfigError


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """The root logger, and a buffer for logs.configure to write into (tests.conftest puts the
    logger back afterwards)."""
    yield logging.getLogger(), io.StringIO()


def _call_line(logger: logging.Logger) -> None:
    call = calls.Call("rid-1", "comms.v1.SequenceService/CreateSequence", subject="svc-a")
    reset = calls._current.set(call)
    try:
        logging.getLogger("comms.service").warning("store unavailable: disk full")
        calls._log_line(call, "OK", 0.0123456, "brand_1", quiet=False)
    finally:
        calls._current.reset(reset)
    logging.getLogger("comms").info("outside any call")


def test_json_lines_carry_the_source_the_request_id_and_a_calls_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    root, out = captured
    logs.configure("INFO", "json", out)
    _call_line(root)
    warning, call, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert warning["time"].endswith("Z") and call["time"][10] == "T"
    assert {k: v for k, v in warning.items() if k != "time"} == {
        "level": "WARNING",
        "logger": "comms.service",
        "message": "store unavailable: disk full",
        "source": "server",
        "request_id": "rid-1",
    }
    assert {k: v for k, v in call.items() if k != "time"} == {
        "level": "INFO",
        "logger": "comms.calls",
        "message": "call",
        "source": "server",
        "request_id": "rid-1",
        "method": "comms.v1.SequenceService/CreateSequence",
        "grpc_code": "OK",
        "http_status": None,
        "duration_ms": 12.346,
        "brand": "brand_1",
        "subject": "svc-a",
    }
    assert (outside["message"], outside["request_id"]) == ("outside any call", None)


def test_plain_lines_are_for_a_person(captured: tuple[logging.Logger, io.StringIO]) -> None:
    root, out = captured
    logs.configure("INFO", "plain", out)
    _call_line(root)
    lines = [line.split(" ", 2)[2] for line in out.getvalue().splitlines()]
    assert lines == [
        "WARNING comms.service: store unavailable: disk full [request_id=rid-1]",
        "INFO comms.calls: call [request_id=rid-1 method=comms.v1.SequenceService/CreateSequence "
        "grpc_code=OK duration_ms=12.346 brand=brand_1 subject=svc-a]",
        "INFO comms: outside any call",
    ]


def test_auto_is_json_unless_stderr_is_a_terminal(
    captured: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, out = captured
    logs.configure("INFO", "auto", out)
    root.info("piped")
    monkeypatch.setattr(out, "isatty", lambda: True)
    logs.configure("INFO", "auto", out)
    root.info("at a terminal")
    piped, terminal = out.getvalue().splitlines()
    assert json.loads(piped)["message"] == "piped"
    assert terminal.endswith(" INFO root: at a terminal")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ([("x-request-id", "abc-123")], True),
        ([("x-request-id", "x" * 200)], True),
        ([("x-request-id", "x" * 201)], False),
        ([("x-request-id", "")], False),
        ([("x-request-id", "a\x7fb")], False),
        ([("x-request-id", b"bytes")], False),
        ([], False),
    ],
)
def test_a_callers_request_id_is_kept_only_when_usable(
    given: list[tuple[str, str | bytes]], kept: bool
) -> None:
    made = calls.request_id(given)
    assert (made == given[0][1]) if kept else (len(made) == 36 and made.count("-") == 4)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_tracing_is_off_unless_an_exporter_is_named(env: dict[str, str]) -> None:
    assert tracing.provider_from_env(env) is None


def test_tracing_is_on_with_the_standard_exporter_names() -> None:
    for name in ("console", "otlp"):
        provider = tracing.provider_from_env({"OTEL_TRACES_EXPORTER": name})
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "comms"
        processor = provider._active_span_processor._span_processors[0]  # type: ignore[attr-defined]
        assert isinstance(processor.span_exporter, ConsoleSpanExporter) == (name == "console")
        provider.shutdown()


def test_an_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match="OTEL_TRACES_EXPORTER must be otlp, console or none, got 'zipkin'"
    ):
        tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "comms"),
        ({"OTEL_SERVICE_NAME": "comms-eu"}, "comms-eu"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=c2,deployment.environment=prod"}, "c2"),
    ],
)
def test_the_service_is_named_comms_unless_the_environment_names_it(
    env: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the SDK's Resource reads os.environ itself
    provider = tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None and provider.resource.attributes["service.name"] == name
    provider.shutdown()
