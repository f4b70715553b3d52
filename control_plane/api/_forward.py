"""Relaying a call, byte for byte, to the control-plane replica that serves it.

`Forwarder` is a server interceptor. For every `tether.v1` call it asks `route(method)` where
the call belongs; `None` serves it here, an address relays it there: the request and response
bodies are copied as raw bytes (nothing is decoded on this replica), the caller's metadata goes
along, the caller's deadline becomes the upstream deadline, and the upstream status, details
and trailers (with `grpc-status-details-bin`, so error reasons survive) come back unchanged.

An interceptor, not a generic handler: grpc.aio asks interceptors first for every call, before
it resolves the method at all, whereas methods registered with `add_*Servicer_to_server`
shadow generic handlers (grpc/_cython/_cygrpc/aio/server.pyx.pxi: `_find_method_handler`
runs the interceptors around `_MethodResolver.resolve_handler`, which tries registered methods
first). It also means a replica needs no handler for a method to relay it.

A relayed call carries `x-tether-forwarded-by: <replica id>` and is never relayed again, so two
replicas whose views of the routing disagree cannot bounce a call between them; and
`x-tether-forwarded-for: <peer>` names the original caller's address for the serving replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import grpc

from tether.v1 import admin_service_pb2, session_service_pb2, worker_service_pb2

log = logging.getLogger(__name__)

__all__ = ["FORWARDED_BY", "FORWARDED_FOR", "Forwarder", "tether_methods"]

FORWARDED_BY = "x-tether-forwarded-by"
FORWARDED_FOR = "x-tether-forwarded-for"

# Headers that belong to one HTTP/2 hop; the upstream call makes its own.
_HOP_HEADERS = frozenset({"user-agent", "te", "content-type"})
# The one grpc- trailer the application sets (the google.rpc.Status); core writes the rest.
_STATUS_DETAILS = "grpc-status-details-bin"

# What a call carries as metadata: grpc.aio.Metadata or a plain sequence of pairs.
Metadata = Iterable[tuple[str, str | bytes]]


def tether_methods() -> dict[str, tuple[bool, bool]]:
    """Every `tether.v1` method's path -> (client_streaming, server_streaming), from the
    service descriptors, so a method added to the contract is relayed with the right shape."""
    arity = {}
    for module in (session_service_pb2, worker_service_pb2, admin_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                arity[f"/{service.full_name}/{method.name}"] = (method.client_streaming, method.server_streaming)
    return arity


def _hop_by_hop(key: str) -> bool:
    return key.startswith(":") or key in _HOP_HEADERS


def _request_metadata(context: grpc.aio.ServicerContext, replica_id: str) -> list[tuple[str, str | bytes]]:
    metadata: list[tuple[str, str | bytes]] = [
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not (_hop_by_hop(key) or key.startswith("grpc-") or key == FORWARDED_FOR)
    ]
    metadata.append((FORWARDED_BY, replica_id))
    metadata.append((FORWARDED_FOR, context.peer()))
    return metadata


def _response_metadata(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (key, value)
        for key, value in metadata or ()
        if not (_hop_by_hop(key) or (key.startswith("grpc-") and key != _STATUS_DETAILS))
    )


class Forwarder(grpc.aio.ServerInterceptor):
    """Relays `tether.v1` calls that `route` sends elsewhere; serves the rest locally.

    `route(full_method_name)` returns the "host:port" of the replica to relay to, or None to
    serve the call here; it runs on the event loop for every call, so it must be quick and
    must not raise. Health and reflection, and any call that was already relayed once, are
    always served here. One channel per upstream address is opened on first use and kept
    (TLS when `credentials` is given); `close()` closes them, cancelling relayed calls in
    flight, and is idempotent. Stop the server first, then close the forwarder.
    """

    def __init__(
        self,
        route: Callable[[str], str | None],
        *,
        replica_id: str,
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._route = route
        self.replica_id = replica_id
        self._credentials = credentials
        self._arity = tether_methods()
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Relayed Lease and event streams can sit quiet; find a dead connection under them.
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # gRPC's own backoff (up to 120 s) would keep failing calls fast long after a
            # restarted replica is back; callers retry UNAVAILABLE themselves.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closed = False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        arity = self._arity.get(method)
        if arity is None or any(key == FORWARDED_BY for key, _ in handler_call_details.invocation_metadata or ()):
            return await continuation(handler_call_details)
        address = self._route(method)
        if address is None:
            return await continuation(handler_call_details)
        return self._relay(method, arity, address)

    async def close(self) -> None:
        """Close every upstream channel; relayed calls still open end CANCELLED."""
        if self._closed:
            return
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)

    # -- relaying -------------------------------------------------------------------------

    async def _channel(self, address: str, context: grpc.aio.ServicerContext) -> grpc.aio.Channel:
        if self._closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"replica {self.replica_id} is shutting down; retry")
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            else:
                channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
            self._channels[address] = channel
        return channel

    def _relay(self, method: str, arity: tuple[bool, bool], address: str) -> grpc.RpcMethodHandler:
        """A handler of the method's shape that relays the call's raw bytes to `address`. No
        (de)serializers anywhere: grpc passes bytes through when they are None."""
        replica_id = self.replica_id

        def call_options(context: grpc.aio.ServicerContext) -> dict:
            return {"metadata": _request_metadata(context, replica_id), "timeout": context.time_remaining()}

        client_streaming, server_streaming = arity
        if not client_streaming and not server_streaming:

            async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes | None:
                relay: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = (
                    await self._channel(address, context)
                ).unary_unary(method)
                call = relay(request, **call_options(context))
                try:
                    response = await _unary_response(call)
                    await _relay_initial_metadata(call, context)
                    await _relay_status(call, context, address)
                    return response
                finally:
                    call.cancel()

            return grpc.unary_unary_rpc_method_handler(unary_unary)

        if not client_streaming:

            async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> None:
                relay: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = (
                    await self._channel(address, context)
                ).unary_stream(method)
                call = relay(request, **call_options(context))
                try:
                    await _relay_responses(call, context)
                    await _relay_status(call, context, address)
                finally:
                    call.cancel()

            return grpc.unary_stream_rpc_method_handler(unary_stream)

        if not server_streaming:

            async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes | None:
                relay: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = (
                    await self._channel(address, context)
                ).stream_unary(method)
                call = relay(**call_options(context))
                pump = asyncio.create_task(_pump(requests, call), name=f"forward requests {method}")
                try:
                    response = await _unary_response(call)
                    await _relay_initial_metadata(call, context)
                    await _relay_status(call, context, address)
                    return response
                finally:
                    call.cancel()
                    await _stop(pump)

            return grpc.stream_unary_rpc_method_handler(stream_unary)

        async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            relay: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = (
                await self._channel(address, context)
            ).stream_stream(method)
            call = relay(**call_options(context))
            pump = asyncio.create_task(_pump(requests, call), name=f"forward requests {method}")
            try:
                await _relay_responses(call, context)
                await _relay_status(call, context, address)
            finally:
                call.cancel()
                await _stop(pump)

        return grpc.stream_stream_rpc_method_handler(stream_stream)


async def _unary_response(call: grpc.aio.UnaryUnaryCall | grpc.aio.StreamUnaryCall) -> bytes | None:
    try:
        return await call
    except grpc.aio.AioRpcError:
        return None  # _relay_status reads the status from the call


async def _relay_initial_metadata(call: grpc.aio.Call, context: grpc.aio.ServicerContext) -> None:
    headers = _response_metadata(await call.initial_metadata())
    if headers:
        await context.send_initial_metadata(headers)


async def _relay_responses(
    call: grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall, context: grpc.aio.ServicerContext
) -> None:
    """Write each upstream message to the caller as it arrives, until the upstream ends."""
    await _relay_initial_metadata(call, context)
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            await context.write(message)
    except grpc.aio.AioRpcError:
        pass  # _relay_status reads the status from the call


async def _relay_status(call: grpc.aio.Call, context: grpc.aio.ServicerContext, address: str) -> None:
    """End the caller's call as the upstream call ended (raises AbortError unless it is OK)."""
    code = await call.code()
    trailers = _response_metadata(await call.trailing_metadata())
    if code == grpc.StatusCode.OK:
        context.set_trailing_metadata(trailers)
        return
    details = await call.details()
    # A replica's own UNAVAILABLE carries its google.rpc.Status; a bare one is the transport's.
    if code == grpc.StatusCode.UNAVAILABLE and not trailers:
        log.debug("replica %s is unreachable: %s", address, details)
        details = f"replica {address} that serves this call is unreachable: {details}; retry"
    await context.abort(code, details, trailing_metadata=trailers)


async def _pump(requests: AsyncIterator[bytes], call: grpc.aio.StreamUnaryCall | grpc.aio.StreamStreamCall) -> None:
    """Copy the caller's messages to the upstream call, then half-close it."""
    try:
        async for message in requests:
            await call.write(message)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the upstream call ended; its status reaches the caller from the response side
    except Exception:
        # The caller's side broke under us: end the upstream call rather than leave it open.
        log.debug("reading the caller's requests failed; cancelling the upstream call", exc_info=True)
        call.cancel()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait((task,))
