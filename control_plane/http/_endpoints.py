"""The contract's services as one connectrpc ASGI application, over the servicers in api/.

The endpoints are built from the service descriptors (as `_server._handlers` builds the gRPC
port's), so every method of `tether.v1.SessionService` and `tether.v1.AdminService` is
served, with its shape, and a method added to the contract is served without a change here.
Each endpoint calls the same servicer method the gRPC port calls, with a `CallContext`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor, descriptor_pb2, symbol_database
from google.protobuf.message import Message

from tether.v1 import admin_service_pb2, session_service_pb2

from ..api._log_ids import name_in_logs
from ._codecs import Encoded, JsonCodec, ProtoCodec
from ._context import Aborted, CallContext

SERVICES = {
    "tether.v1.SessionService": session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
    "tether.v1.AdminService": admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
}
# Methods whose servicers yield responses already encoded as bytes (shared by subscribers).
PRE_ENCODED = frozenset({"/tether.v1.SessionService/StreamSessionEvents"})

_IDEMPOTENCY = {
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS: IdempotencyLevel.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT: IdempotencyLevel.IDEMPOTENT,
}
_STREAM_TYPES = {
    (False, False): StreamType.UNARY,
    (True, False): StreamType.CLIENT_STREAM,
    (False, True): StreamType.SERVER_STREAM,
    (True, True): StreamType.BIDI_STREAM,
}

# A servicer method: (request or request iterator, context) -> response or response iterator.
Servicer = Callable[..., Any]


class ServiceApp(ConnectASGIApplication[object]):
    """Every method of the given services, at `/<service>/<method>`."""

    def __init__(
        self,
        servicers: Mapping[str, object],
        *,
        read_max_bytes: int,
        interceptors: tuple[Any, ...] = (),
    ) -> None:
        endpoints = {path: ep for name, impl in servicers.items() for path, ep in _endpoints(name, impl).items()}
        super().__init__(
            service=object(),
            endpoints=lambda _: endpoints,
            interceptors=interceptors,
            read_max_bytes=read_max_bytes,
            codecs=(ProtoCodec(), JsonCodec()),
        )
        self.paths = frozenset(endpoints)

    @property
    def path(self) -> str:
        return "/"


def _endpoints(full_name: str, impl: object) -> dict[str, Any]:
    db = symbol_database.Default()
    table: dict[str, Any] = {}  # connectrpc's Endpoint union is not public
    for method in SERVICES[full_name].methods:
        path = f"/{full_name}/{method.name}"
        shape = (method.client_streaming, method.server_streaming)
        output: type[Message] = db.GetSymbol(method.output_type.full_name)
        info: MethodInfo = MethodInfo(
            name=method.name,
            service_name=full_name,
            input=db.GetSymbol(method.input_type.full_name),
            output=output,
            idempotency_level=_idempotency(method),
            stream_type=_STREAM_TYPES[shape],
        )
        fn = getattr(impl, method.name)
        if shape == (False, False):
            table[path] = Endpoint.unary(info, _unary(fn))
        elif shape == (False, True):
            table[path] = Endpoint.server_stream(info, _server_stream(fn, output if path in PRE_ENCODED else None))
        elif shape == (True, False):
            table[path] = Endpoint.client_stream(info, _client_stream(fn))
        else:  # no bidi method in these services; the shape is served all the same
            table[path] = Endpoint.bidi_stream(info, _bidi_stream(fn))
    return table


def _idempotency(method: descriptor.MethodDescriptor) -> IdempotencyLevel:
    level = method.GetOptions().idempotency_level
    return _IDEMPOTENCY.get(level, IdempotencyLevel.UNKNOWN)


async def _requests(stream: AsyncIterator[Message]) -> AsyncIterator[Message]:
    """The caller's request stream, whose errors (a message that does not decode, a client
    gone) end the call with their own status rather than as the servicer's INTERNAL."""
    try:
        async for message in stream:
            yield message
    except ConnectError as err:
        raise Aborted(err) from None


def _unary(fn: Servicer) -> Callable[[Message, RequestContext], Any]:
    async def call(request: Message, ctx: RequestContext) -> Message:
        name_in_logs(request)
        try:
            return await fn(request, CallContext(ctx))
        except Aborted as aborted:
            raise aborted.error from None

    return call


def _client_stream(fn: Servicer) -> Callable[[AsyncIterator[Message], RequestContext], Any]:
    async def call(requests: AsyncIterator[Message], ctx: RequestContext) -> Message:
        try:
            return await fn(_requests(requests), CallContext(ctx))
        except Aborted as aborted:
            raise aborted.error from None

    return call


def _server_stream(
    fn: Servicer, pre_encoded: type[Message] | None
) -> Callable[[Message, RequestContext], AsyncIterator[Any]]:
    async def call(request: Message, ctx: RequestContext) -> AsyncIterator[Message | Encoded]:
        name_in_logs(request)
        try:
            async with contextlib.aclosing(fn(request, CallContext(ctx))) as responses:
                async for response in responses:
                    yield Encoded(response, pre_encoded) if pre_encoded is not None else response
        except Aborted as aborted:
            raise aborted.error from None

    return call


def _bidi_stream(fn: Servicer) -> Callable[[AsyncIterator[Message], RequestContext], AsyncIterator[Any]]:
    async def call(requests: AsyncIterator[Message], ctx: RequestContext) -> AsyncIterator[Message]:
        try:
            async with contextlib.aclosing(fn(_requests(requests), CallContext(ctx))) as responses:
                async for response in responses:
                    yield response
        except Aborted as aborted:
            raise aborted.error from None

    return call
