"""The server's log: JSON lines for a log shipper, or plain lines for a person at a terminal.

Every line is marked `"source": "server"` (Envoy's access log lines say `"source": "envoy"`)
and, while a call is being served, carries its request id (calls.py)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from comms import calls

# The fields of a call's log line (calls._log_line), in the order a plain line shows them.
CALL_FIELDS = ("method", "grpc_code", "http_status", "duration_ms", "brand", "subject")


class _RequestId(logging.Filter):
    """Adds the request id of the call being served to each record made while it runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            call = calls.current()
            record.request_id = call.request_id if call else None
        return True


class _Json(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"source": "server"},
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # RFC 3339 in UTC with milliseconds, as Envoy's access log writes its times.
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


class _Plain(logging.Formatter):
    """`time LEVEL logger: message`, then the request id and a call's fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra: dict[str, Any] = {"request_id": getattr(record, "request_id", None)}
        extra |= {name: getattr(record, name, None) for name in CALL_FIELDS}
        shown = " ".join(f"{key}={value}" for key, value in extra.items() if value is not None)
        return f"{line} [{shown}]" if shown else line


def configure(level: str, log_format: str = "auto", stream: TextIO | None = None) -> None:
    """Log to stream (stderr) at level, as JSON unless log_format is "plain" or, with
    "auto", the stream is a terminal."""
    stream = stream or sys.stderr
    plain = log_format == "plain" or (log_format == "auto" and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestId())
    handler.setFormatter(_Plain() if plain else _Json())
    root = logging.getLogger()
    root.handlers[:] = [handler]  # in place of any earlier one: configured once per process
    root.setLevel(level)
