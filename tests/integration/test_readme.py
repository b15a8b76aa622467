"""The README's examples, run as written against a real stack.

Each ```sh block holding one command is followed by a ```text block with what it prints.
Ports are swapped for the stack's; ids, etags and timestamps are compared by shape only. For
`curl -i` the status line and the headers shown must match and the body must be equal.
The ```python client example, followed by its ```text output, is run the same way."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Stack

README = Path(__file__).parents[2] / "README.md"
EXAMPLE = re.compile(
    r"```sh\n(?P<command>(?:curl|\.venv/bin/grpcurl) [^\n]+)\n```\n```text\n(?P<output>.*?)```",
    re.S,
)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")
ETAG = re.compile(r'((?:"etag": ?|etag: )")[0-9a-f]{32}"')
PYTHON_EXAMPLE = re.compile(r"```python\n(?P<code>.*?)```\n```text\n(?P<output>.*?)```", re.S)
# The walk through the life of a sequence: its commands run in order, on one sequence ($ID).
WALK_HEADING = "## The life of a sequence\n"
_BEFORE, _, _REST = README.read_text().partition(WALK_HEADING)
WALK, _, _AFTER = _REST.partition("\n## ")
WALK_STEP = re.compile(r"```sh\n(?P<command>[^\n]+)\n```\n(?:```text\n(?P<output>.*?)```)?", re.S)
EXAMPLES = EXAMPLE.findall(_BEFORE + _AFTER)
PYTHON_EXAMPLES = PYTHON_EXAMPLE.findall(README.read_text())


def _shape(text: str) -> str:
    return ETAG.sub(r'\1<etag>"', TIMESTAMP.sub("<time>", UUID.sub("<uuid>", text))).strip()


def _split_http(text: str) -> tuple[str, set[str], str]:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    status, *headers = head.strip().split("\n")
    return status, {_shape(h.lower()) for h in headers}, _shape(body)


def test_the_readme_has_its_examples() -> None:
    assert len(EXAMPLES) == 13
    assert len(PYTHON_EXAMPLES) == 1


def _run(
    stack: Stack, command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command with the README's ports swapped for the stack's, and a token in $TOKEN
    (the subject `comms dev-token` gives, as revisions show it), and env."""
    ports = {"localhost:8080": stack.envoy_target, "localhost:50051": stack.grpc_target}
    for written, real in ports.items():
        command = [part.replace(written, real) for part in command]
    env = os.environ | {"NO_PROXY": "*", "TOKEN": stack.keys.token(sub="developer")} | (env or {})
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, check=False)


def _same(command: str, ran: subprocess.CompletedProcess[str], shown: str) -> None:
    if command.startswith("curl -i "):
        status, headers, body = _split_http(ran.stdout)
        want_status, want_headers, want_body = _split_http(shown)
        assert (status, body) == (want_status, want_body)
        assert want_headers <= headers
    else:
        assert _shape(ran.stdout + ran.stderr) == _shape(shown)


@pytest.mark.parametrize(("command", "shown"), EXAMPLES, ids=[c[:60] for c, _ in EXAMPLES])
def test_readme_example(stack: Stack, command: str, shown: str) -> None:
    command = command.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")
    _same(command, _run(stack, ["bash", "-c", command]), shown)


def test_the_readme_walks_a_sequence_through_its_life(stack: Stack) -> None:
    steps = WALK_STEP.findall(WALK)
    assert len(steps) == 15 and "```mermaid\nstateDiagram-v2\n" in WALK
    first, _ = steps[0]
    assert first.startswith("export ID=$(curl ")
    made = _run(stack, ["bash", "-c", f'{first} && echo "$ID"'])
    env = {"ID": made.stdout.strip()}
    assert UUID.fullmatch(env["ID"]), made
    for command, shown in steps[1:]:
        command = command.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")
        _same(command, _run(stack, ["bash", "-c", command], env), shown)


@pytest.mark.parametrize(("code", "shown"), PYTHON_EXAMPLES)
def test_readme_python_example(stack: Stack, code: str, shown: str) -> None:
    ran = _run(stack, [sys.executable, "-c", code])
    assert (ran.returncode, ran.stderr) == (0, "")
    assert _shape(ran.stdout) == _shape(shown)
