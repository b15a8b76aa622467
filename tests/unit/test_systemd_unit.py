"""The systemd template unit the README documents for several servers on one machine is one
systemd accepts: `systemd-analyze verify` says nothing about it (it warns on a directive it
cannot parse, and fails on a command that is not there)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"
INSTALLED = "/opt/comms/.venv/bin/comms"

pytestmark = pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed"
)


def _unit() -> str:
    section = README.read_text().split("\n## Several hosts\n", 1)[1].split("\n## ", 1)[0]
    (unit,) = re.findall(r"```ini\n(.*?)```", section, re.S)
    return unit


def _verify(unit: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """verify of an instance of the unit; the command must exist, so this checkout's comms
    stands in for the installed one."""
    comms = str(Path(sys.executable).parent / "comms")
    (directory / "comms-server@.service").write_text(unit.replace(INSTALLED, comms))
    instance = directory / "comms-server@50051.service"
    return subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True
    )


def test_the_readme_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _unit()
    assert f"ExecStart={INSTALLED} serve --grpc-port %i" in unit
    verified = _verify(unit, tmp_path)
    assert (verified.returncode, verified.stdout, verified.stderr) == (0, "", "")


def test_a_broken_unit_is_caught(tmp_path: Path) -> None:
    verified = _verify(_unit().replace("RestartSec=2", "RestartSec=x"), tmp_path)
    assert "Failed to parse sec value, ignoring: x" in verified.stderr
