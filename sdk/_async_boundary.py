"""`ClientBoundary`: the one place where `AsyncClient`'s unary calls meet the stubs.

`AsyncClient` sets the state declared here in its `__init__`; the call groups it is composed
of (`_async_admin`, `_async_bundles`) reach the control plane only through `_unary`, or, for
streams, through the stubs with `_deadline` and `translate_rpc_error`, as `stream_events` does.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc

from ._errors import translate_rpc_error
from ._stubs import AdminServiceStub, HealthStub, SessionServiceStub

__all__ = ["ClientBoundary"]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class ClientBoundary:
    """The stubs, credentials and default deadline of a client, and the call that uses them:
    every unary call has a deadline, and every `AioRpcError` becomes an SDK exception."""

    timeout_s: float
    _closed: bool
    _metadata: tuple[tuple[str, str], ...] | None
    _transport: dict[str, Any]
    _stub: SessionServiceStub
    _admin_stub: AdminServiceStub
    _health_stub: HealthStub

    def _deadline(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout_s: float | None,
        *,
        authenticated: bool = True,
    ) -> _Response:
        if self._closed:
            raise RuntimeError("AsyncClient is closed")
        metadata = self._metadata if authenticated else None
        try:
            return await method(request, timeout=self._deadline(timeout_s), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, **self._transport) from exc
