"""The peer of issue 14 (the service as a FastAPI team would write it), started from the file
`make bench --peer PATH` is given: `uvicorn <file's module>:app` as its docstring says, with a
fresh SQLite database in the benchmark's work directory (COMMS_PEER_DB)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.stack import free_port


@dataclass(frozen=True)
class Peer:
    process: subprocess.Popen[bytes]
    http_url: str  # its /v1/sequences


def _wait_answering(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until url gets an HTTP answer, whatever its status (the peer has no health route)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the peer exited with {process.returncode}:\n{tail}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the peer did not answer {url} within 30 s")


@contextlib.contextmanager
def running_peer(app_file: Path, workdir: Path) -> Iterator[Peer]:
    port, log = free_port(), workdir / "peer.log"
    command = [
        *(sys.executable, "-m", "uvicorn", f"{app_file.stem}:app"),
        *("--app-dir", str(app_file.resolve().parent), "--host", "127.0.0.1", "--port", str(port)),
    ]
    env = os.environ | {"COMMS_PEER_DB": str(workdir / "peer.db")}
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}/v1/sequences"
        _wait_answering(process, f"{url}/none", log)
        yield Peer(process, url)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
