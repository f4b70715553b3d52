"""Server reflection under both names tools ask for: `grpc.reflection.v1` (which current grpcurl
and grpcui try first) and `grpc.reflection.v1alpha`.

grpcio-reflection ships only v1alpha. The v1 protocol is the same file under another package,
field for field, so one servicer answers both: its messages are sent and read with the v1alpha
classes, and a v1 copy of the file descriptor goes into the pool so that v1 itself can be
described like any other service.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)

_V1ALPHA_PACKAGE = ".grpc.reflection.v1alpha."
_V1_PACKAGE = ".grpc.reflection.v1."


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
        return  # generated code (or an earlier server in this process) added it
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = "grpc.reflection.v1"
    file.ClearField("options")

    def rename(type_name: str) -> str:
        return (
            _V1_PACKAGE + type_name.removeprefix(_V1ALPHA_PACKAGE)
            if type_name.startswith(_V1ALPHA_PACKAGE)
            else type_name
        )

    for message in file.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = rename(field.type_name)
    for service in file.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    pool.AddSerializedFile(file.SerializeToString())


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha for `service_names` (the reflection services are added)."""
    _register_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer([*service_names, *SERVICE_NAMES])
    for name in SERVICE_NAMES:
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),)
        )
