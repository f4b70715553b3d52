"""The servicers in api/ called over HTTP: a Connect call's context seen as a grpc.aio one.

The servicers read their caller from `invocation_metadata()` and end a call with
`abort(code, message, trailing_metadata)` carrying the `google.rpc.Status` that
`api/_errors.py` built. `CallContext` gives them exactly that over a Connect
`RequestContext`, so the HTTP port runs the same code, with the same authentication and the
same errors, as the gRPC port. `abort` raises `Aborted`, a `grpc.aio.AbortError` (which
`api/_errors.translate` lets through untouched), carrying the `ConnectError` the endpoint
raises to connectrpc: the status code, the message, and every detail (ErrorInfo, BadRequest)
as the Connect error's `details`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NoReturn

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.request import RequestContext
from google.rpc import status_pb2  # type: ignore[import-untyped]
from protobuf.wkt import Any as WireAny

from ..api._errors import status_for
from ..domain import errors

_STATUS_DETAILS = "grpc-status-details-bin"
# gRPC spells one code differently from Connect; the rest share their names.
_CODES = {grpc.StatusCode.CANCELLED: Code.CANCELED}


class Aborted(grpc.aio.AbortError):
    """A call ended with a status: what `CallContext.abort` raises."""

    def __init__(self, error: ConnectError) -> None:
        super().__init__(error.message)
        self.error = error


def connect_error(code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None) -> ConnectError:
    """The Connect error of a gRPC status, with the status's details kept byte for byte."""
    details: Sequence[ErrorDetail] = ()
    if status is not None:
        details = [ErrorDetail(WireAny(type_url=d.type_url, value=d.value)) for d in status.details]
    connect_code = _CODES.get(code) or Code[code.name]
    return ConnectError(connect_code, message, details)


def domain_error(err: errors.DomainError) -> ConnectError:
    """A domain error as the gRPC port reports it (`api/_errors.status_for`), for Connect."""
    code, status = status_for(err)
    return connect_error(code, status.message, status)


class CallContext:
    """The part of `grpc.aio.ServicerContext` the session and admin servicers use.

    The request's headers are its metadata (lower-case names, as gRPC's), its client address
    its peer (`ipv4:127.0.0.1:54321`, as gRPC writes it), and its Connect or gRPC-Web
    timeout its time remaining."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._ctx.request_headers.allitems())

    def peer(self) -> str:
        address = self._ctx.client_address or ""
        if not address:
            return ""
        host = address.rsplit(":", 1)[0]
        return f"ipv6:[{host}]:{address.rsplit(':', 1)[1]}" if ":" in host else f"ipv4:{address}"

    def time_remaining(self) -> float | None:
        remaining_ms = self._ctx.timeout_ms
        return None if remaining_ms is None else max(remaining_ms, 0.0) / 1000

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Iterable[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        status = None
        for key, value in trailing_metadata or ():
            if key == _STATUS_DETAILS and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
        raise Aborted(connect_error(code, details, status))
