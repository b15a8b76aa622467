"""The `comms` console script: comms.cli needs the server extra, so without it the command
says what to install in one line instead of an ImportError's traceback."""

from __future__ import annotations


def main() -> None:
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
