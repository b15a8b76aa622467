"""The wheel's build hook: what `make build` generates from proto/ (tools/protogen.py) and the
gateway's files are written into the build directory, so an installed wheel is complete.
An editable install skips it: there `make build` generates into server/comms/v1 and
comms.gateway reads gateway/ from the checkout."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# gateway/ ships as this package directory (comms.gateway looks for it there first).
GATEWAY_PACKAGE_DIR = "gateway_files"


def _protogen() -> ModuleType:
    """tools/protogen.py, loaded by path: it is not part of the installed package."""
    spec = importlib.util.spec_from_file_location("protogen", ROOT / "tools" / "protogen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithGenerated(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        out = Path(self.build_lib)
        _protogen().generate(out)
        shutil.copytree(ROOT / "gateway", out / "comms" / GATEWAY_PACKAGE_DIR, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithGenerated})
