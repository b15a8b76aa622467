"""Server reflection, v1 and v1alpha, answering with the proto's doc comments.

grpcio-reflection implements v1alpha only. v1 is the same protocol under another package
(grpc.reflection.v1: the same messages and field numbers), so one servicer serves both
names, and v1's file is v1alpha's renamed. The servicer builds its answers from a descriptor
pool, which keeps no source info; so a file protoc built from proto/ is answered as protoc
wrote it, comments included, in the descriptor set beside the stubs (api.binpb,
--include_source_info), and `grpcurl describe` shows them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from comms import gateway

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_OTHERS = (error_details_pb2, health_pb2, reflection_pb2)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto as v1's: its package and the type names renamed."""
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = f".{file.package}.", ".grpc.reflection.v1."

    def renamed(name: str) -> str:
        return new + name.removeprefix(old) if name.startswith(old) else name

    file.name, file.package = "grpc/reflection/v1/reflection.proto", new.strip(".")
    file.ClearField("options")
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # set only on message and enum fields
                field.type_name = renamed(field.type_name)
    for method in file.service[0].method:
        method.input_type, method.output_type = (
            renamed(method.input_type),
            renamed(method.output_type),
        )
    return file


def _as_served(file: descriptor_pb2.FileDescriptorProto) -> bytes:
    """The file without the json_name protoc writes on every field: the JSON of this API uses
    the proto's field names (brand_id), and grpcurl prints a json_name when it is given
    (brandId), as the descriptors of a pool never give it."""
    file = descriptor_pb2.FileDescriptorProto.FromString(file.SerializeToString())
    messages = list(file.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    return file.SerializeToString()


class Reflection(reflection.ReflectionServicer):
    """grpcio-reflection's servicer over a pool of the built proto (with its source info),
    grpc.health.v1 and both reflection versions."""

    def __init__(self, service_names: Iterable[str]) -> None:
        built = descriptor_pb2.FileDescriptorSet.FromString(gateway.descriptor_path().read_bytes())
        pool = descriptor_pool.DescriptorPool()
        # Beside the built files: what errors' details are made of (google.rpc.BadRequest),
        # and the other services served.
        others = [descriptor_pb2.FileDescriptorProto() for _ in _OTHERS]
        for file, module in zip(others, _OTHERS, strict=True):
            module.DESCRIPTOR.CopyToProto(file)
        for file in [*built.file, *others, _v1_file()]:  # each after its imports
            pool.Add(file)
        super().__init__(list(service_names), pool=pool)
        self._sourced = {file.name: _as_served(file) for file in built.file}

    def ServerReflectionInfo(
        self, request_iterator: Any, context: grpc.ServicerContext
    ) -> Iterator[reflection_pb2.ServerReflectionResponse]:
        for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                files = response.file_descriptor_response.file_descriptor_proto
                for i, data in enumerate(files):
                    name = descriptor_pb2.FileDescriptorProto.FromString(data).name
                    files[i] = self._sourced.get(name, data)
            yield response


def enable(server: grpc.Server, service_names: Iterable[str]) -> None:
    """Serve reflection, both versions, listing service_names and themselves."""
    names = [*service_names, V1_SERVICE, reflection.SERVICE_NAME]
    servicer = Reflection(sorted(names))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1}),)
    )
