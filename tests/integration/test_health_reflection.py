"""What generic gRPC tools see of a real control plane: the health service answers SERVING for
every service the server offers (the health and reflection services included), and reflection
answers under both `grpc.reflection.v1` (asked first by current grpcurl and grpcui) and
`grpc.reflection.v1alpha`."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from tests.helpers.processes import FAST
from tether.control_plane import ControlPlane, Settings

REFLECTION_NAMES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
TETHER_SERVICES = ("tether.v1.SessionService", "tether.v1.WorkerService", "tether.v1.AdminService")


@pytest.fixture
async def channel(tmp_path: pathlib.Path) -> AsyncIterator[grpc.aio.Channel]:
    settings = Settings(port=0, db=str(tmp_path / "tether.db"), timings=FAST, dev_owner="local")
    async with ControlPlane(settings) as cp, grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as ch:
        yield ch


@pytest.mark.parametrize("service", ["", *TETHER_SERVICES, "grpc.health.v1.Health", *REFLECTION_NAMES])
async def test_health_answers_serving_for_every_served_service(channel: grpc.aio.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def _reflect(
    channel: grpc.aio.Channel, service: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    # v1 and v1alpha messages are the same on the wire; only the method path differs.
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(timeout=5)
    await call.write(request)
    await call.done_writing()
    response = await call.read()
    assert response is not grpc.aio.EOF
    return response


@pytest.mark.parametrize("reflection_service", REFLECTION_NAMES)
async def test_reflection_lists_and_describes_under_v1_and_v1alpha(
    channel: grpc.aio.Channel, reflection_service: str
) -> None:
    listed = await _reflect(channel, reflection_service, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {*TETHER_SERVICES, "grpc.health.v1.Health", *REFLECTION_NAMES} <= names
    for symbol, package in (
        ("tether.v1.SessionService", "tether.v1"),
        ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1"),
    ):
        found = await _reflect(
            channel, reflection_service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        )
        assert found.WhichOneof("message_response") == "file_descriptor_response", found
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in found.file_descriptor_response.file_descriptor_proto
        ]
        assert any(f.package == package and symbol.rsplit(".", 1)[1] in {s.name for s in f.service} for f in files)
