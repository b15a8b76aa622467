"""The `comms` console script: comms.cli needs the server extra, so without it the command
says what to install in one line instead of an ImportError's traceback."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

# prometheus-client's multiprocess mode (comms.metrics), chosen at its import: the server
# processes of `comms serve` and `comms up` write their metrics to files here.
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _metrics_dir() -> None:
    """A private directory for this run's metrics files, unless the operator names one."""
    if os.environ.get(_MULTIPROC_ENV) or sys.argv[1:2] not in (["serve"], ["up"]):
        return
    made = tempfile.mkdtemp(prefix="comms-metrics-")
    os.environ[_MULTIPROC_ENV] = made
    atexit.register(shutil.rmtree, made, ignore_errors=True)


def main() -> None:
    _metrics_dir()
    try:
        from comms import cli
    except ModuleNotFoundError as missing:
        if (missing.name or "").startswith("comms"):
            raise  # our own module missing is a broken build, not a missing extra
        raise SystemExit(
            f"comms: the server is not installed ({missing.name} is missing): "
            'pip install "comms[server]"'
        ) from None
    raise SystemExit(cli.main())
