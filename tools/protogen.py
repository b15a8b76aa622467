"""Everything generated from proto/: the Python stubs (comms/v1/*_pb2*.py and .pyi), the
descriptor set Envoy loads (comms/v1/api.binpb) and the OpenAPI document the gateway serves
(comms/v1/openapi.json), with Swagger UI's files beside it for GET /docs. Never committed;
made in one place for both ways a checkout is built:

    python tools/protogen.py server     `make build`, into the tree the editable install uses
    setup.py's build_py                 a wheel, into its build directory

It needs grpcio-tools, googleapis-common-protos, protovalidate and swagger-ui-bundle-v2 (the
[build-system] requires).

The proto files' field rules import buf/validate/validate.proto. The protovalidate wheel ships
that file only compiled, inside its generated module, and the schema registry that serves the
source is out of reach, so protoc resolves the import from a descriptor set written from it
(--descriptor_set_in), and its Python module (buf/validate/validate_pb2.py, which the stubs
import) is generated beside ours."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = ROOT / "server"  # where the hand-written comms package lives


def _generated(out: Path) -> Path:
    """Where the generated files go: the comms.v1 package under `out`."""
    return out / "comms" / "v1"


def _includes() -> list[str]:
    """google/api/*.proto (googleapis-common-protos) and google/protobuf/*.proto (grpc_tools
    bundles them; its `python -m` entry point adds them, protoc.main does not)."""
    import google.api
    import grpc_tools

    return [
        f"-I{Path(google.api.__path__[0]).parents[1]}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
    ]


VALIDATE_PROTO = "buf/validate/validate.proto"


def validate_descriptor_set() -> bytes:
    """buf/validate/validate.proto as a FileDescriptorSet, from the protovalidate wheel."""
    from google.protobuf import descriptor_pb2
    from protovalidate._gen.buf.validate import validate_pb

    files = descriptor_pb2.FileDescriptorSet()
    files.file.add().MergeFromString(validate_pb.desc().proto.to_binary())
    return files.SerializeToString()


def protoc_args(out: Path, validate_set: Path) -> list[str]:
    """protoc's arguments: the stubs under `out`, and the descriptor set beside them."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    return [
        f"--descriptor_set_in={validate_set}",
        f"-I{PROTO_DIR}",
        *_includes(),
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        "--include_imports",
        "--include_source_info",  # the doc comments become the OpenAPI descriptions
        f"--descriptor_set_out={_generated(out) / 'api.binpb'}",
        *protos,
    ]


# GET /docs's script and style (comms.gateway.DOCS), and their licence: vendored from the
# swagger-ui-bundle-v2 package at build time, so that the built tree serves them with no CDN
# and nothing fetched at run time, and an install needs no package for them.
SWAGGER_UI = "swagger-ui-bundle-v2"
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")


def vendor_swagger_ui(generated: Path) -> None:
    import swagger_ui_bundle

    source = Path(str(swagger_ui_bundle.swagger_ui_path))
    for name in SWAGGER_UI_FILES:
        shutil.copyfile(source / name, generated / name)
    licence = next(f for f in importlib.metadata.files(SWAGGER_UI) or () if f.name == "LICENSE")
    shutil.copyfile(Path(str(licence.locate())), generated / "swagger-ui.LICENSE")


def generate(out: Path) -> None:
    """Writes the stubs, api.binpb and openapi.json under out/comms/v1."""
    from grpc_tools import protoc

    generated = _generated(out)
    generated.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        validate_set = Path(tmp) / "validate.binpb"
        validate_set.write_bytes(validate_descriptor_set())
        validate_module = [*_includes(), f"--python_out={out}", f"--pyi_out={out}", VALIDATE_PROTO]
        for args in (
            [f"--descriptor_set_in={validate_set}", *validate_module],
            protoc_args(out, validate_set),
        ):
            if protoc.main(["protoc", *args]) != 0:
                raise SystemExit("protoc failed (its message is above)")
    # comms.openapi reads the fresh stubs in `out` and the rest of comms from the source tree.
    path = os.pathsep.join(dict.fromkeys([str(out), str(PACKAGE_DIR)]))
    descriptor_set, document = generated / "api.binpb", generated / "openapi.json"
    command = [sys.executable, "-m", "comms.openapi", str(descriptor_set), "-o", str(document)]
    subprocess.run(command, check=True, env=os.environ | {"PYTHONPATH": path})
    vendor_swagger_ui(generated)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/protogen.py OUT_DIR")
    generate(Path(sys.argv[1]).resolve())
