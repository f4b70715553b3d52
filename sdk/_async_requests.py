"""`RequestCalls`: `AsyncClient`'s calls on a runtime's pending requests (approvals, user
input), mixed into it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tether.v1 import session_service_pb2 as pb

from . import _convert
from ._async_boundary import ClientBoundary
from ._models import PendingRequest, RequestState

__all__ = ["RequestCalls"]


class RequestCalls(ClientBoundary):
    """`AsyncClient`'s RespondToRequest and ListRequests calls."""

    async def respond_to_request(
        self,
        session_id: str,
        request_id: str,
        response_json: str | None = None,
        *,
        decision: str | None = None,
        answers: Mapping[str, Sequence[str]] | None = None,
        timeout_s: float | None = None,
    ) -> PendingRequest:
        """Answer a runtime's pending request, exactly once; returns it resolved.

        Give the answer in exactly one form (else ValueError): `decision` for an approval
        ("accept", "acceptForSession", "decline", "cancel"; sent as ``{"decision": ...}``),
        `answers` for user input (question id -> answers; sent as
        ``{"answers": {id: {"answers": [...]}}}``), or `response_json` as the runtime wants it.
        Raises `RequestNotFoundError` for an unknown request, `RequestAlreadyResolvedError` for
        one already answered or expired, `InvalidArgumentError` for an answer that does not fit
        the request's kind.
        """
        request = pb.RespondToRequestRequest(
            session_id=session_id,
            request_id=request_id,
            response_json=_convert.answer_json(response_json, decision, answers),
        )
        response = await self._unary(self._stub.RespondToRequest, request, timeout_s)
        return _convert.pending_request_from_proto(response.request)

    async def list_requests(
        self,
        session_id: str,
        *,
        state: RequestState | str | None = None,
        timeout_s: float | None = None,
    ) -> list[PendingRequest]:
        """The session's pending requests, oldest first; `state` (a `RequestState` or its name,
        "pending") keeps only those in that state, None (or "all") keeps every one."""
        request = pb.ListRequestsRequest(session_id=session_id, state=_convert.request_state_to_proto(state))
        response = await self._unary(self._stub.ListRequests, request, timeout_s)
        return [_convert.pending_request_from_proto(r) for r in response.requests]
