"""The build's own checks: Envoy accepts the rendered config, buf accepts the proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from comms import gateway
from comms.config import Settings

BIN = Path(sys.executable).parent


def test_rendered_envoy_config_validates(tmp_path: Path) -> None:
    config = gateway.write_config(Settings(data_dir=tmp_path), tmp_path)
    checked = subprocess.run(
        [*gateway.envoy_command(config), "--mode", "validate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "configuration '" in checked.stdout and "' OK" in checked.stdout


def test_buf_lint_passes() -> None:
    linted = subprocess.run(
        [BIN / "buf", "lint", gateway.descriptor_path(), "--path", "comms"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert (linted.returncode, linted.stdout, linted.stderr) == (0, "", "")
