"""Replicas on one PostgreSQL database: only the serving replica answers on its HTTP port.

The gRPC port relays a call that reaches a follower to the leader (`api/_forward.py`); the
HTTP port does not relay. A follower answers UNAVAILABLE naming why, before the request is
read, so a load balancer's health check or the client's retry finds the leader.
"""

from __future__ import annotations

from collections.abc import Callable

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext


class ServingGate:
    """A connectrpc metadata interceptor: `refusal()` returns why this replica does not serve
    now, or None when it does."""

    def __init__(self, refusal: Callable[[], str | None]) -> None:
        self._refusal = refusal

    async def on_start(self, ctx: RequestContext) -> None:
        why = self._refusal()
        if why is not None:
            raise ConnectError(Code.UNAVAILABLE, why)

    async def on_end(self, token: None, ctx: RequestContext, error: Exception | None) -> None:
        return None
