"""protovalidate's buf/validate/validate.proto as a FileDescriptorSet, for protoc.

The protovalidate wheel ships that file only compiled, inside its generated module, and the
schema registry that serves the source is out of reach; protoc resolves the proto files'
`import "buf/validate/validate.proto"` from this set instead (--descriptor_set_in).

    python -m comms.bufvalidate OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from protovalidate._gen.buf.validate import validate_pb


def descriptor_set() -> bytes:
    files = descriptor_pb2.FileDescriptorSet()
    files.file.add().MergeFromString(validate_pb.desc().proto.to_binary())
    return files.SerializeToString()


if __name__ == "__main__":
    Path(sys.argv[1]).write_bytes(descriptor_set())
