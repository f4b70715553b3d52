"""SessionService: the application-facing API, as a thin adapter over the hub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from tether.v1 import resources_pb2 as pb
from tether.v1 import session_service_pb2 as spb

from ..domain import errors
from ..domain.hub import Hub
from ..domain.model import InputPolicy, RequestState, SessionState
from ..domain.ports import SessionQuery
from . import _bundle_workspace, _bundles, _pages
from . import _validate as v
from ._auth import Authenticator
from ._convert import events_message, request_pb, session_pb, snapshot_pb, turn_pb
from ._errors import translate

if TYPE_CHECKING:
    from ..domain._workspaces import Workspaces

#: A refused import reads (and drops) up to this much more of what the client still sends,
#: for up to this long, before it answers: a client still writing when the call ends can get
#: gRPC's INTERNAL "Internal error from Core" in place of the status that says what was wrong.
_DRAIN_BYTES = 16 << 20
_DRAIN_S = 2.0

_PAGE_DEFAULT = 100
_PAGE_MAX = 1000


# ListSessions' order_by values: (sort by activity, descending).
_SESSION_ORDERS = {
    "": (False, True),
    "create_time desc": (False, True),
    "create_time": (False, False),
    "last_activity_time desc": (True, True),
    "last_activity_time": (True, False),
}
_TURN_ORDERS = {"": False, "create_time": False, "create_time desc": True}  # descending
_UPDATABLE = ("title", "labels")


def _order(field: str, value: str, allowed: dict[str, Any]) -> Any:
    normalized = " ".join(value.split()).lower().replace(" asc", "")
    if normalized not in allowed:
        names = ", ".join(repr(k) for k in allowed if k)
        raise errors.InvalidArgument(field, f"unknown order {value!r}; expected one of {names}")
    return allowed[normalized]


def _update_mask(request: spb.UpdateSessionRequest) -> tuple[str, ...]:
    """The fields UpdateSession changes (AIP-134): the mask's paths, "*" for all, or without a
    mask the ones set in the request."""
    if not request.HasField("update_mask"):
        given = tuple(f for f in _UPDATABLE if getattr(request.session, f))
        if not given:
            raise errors.InvalidArgument(
                "update_mask", "names no field and the request sets none; set session.title or session.labels"
            )
        return given
    paths = list(request.update_mask.paths)
    if not paths:
        raise errors.InvalidArgument(
            "update_mask.paths", f"is empty; name the fields to change: {', '.join(_UPDATABLE)}"
        )
    if paths == ["*"]:
        return _UPDATABLE
    for i, path in enumerate(paths):
        if path not in _UPDATABLE:
            raise errors.InvalidArgument(
                f"update_mask.paths[{i}]",
                f"{path!r} cannot be changed; UpdateSession changes {', '.join(_UPDATABLE)} (or '*')",
            )
    return tuple(dict.fromkeys(paths))


class SessionService:
    def __init__(self, hub: Hub, auth: Authenticator, workspaces: Workspaces) -> None:
        self._hub = hub
        self._auth = auth
        self._workspaces = workspaces  # a bundle carries the session's workspace checkpoints

    async def CreateSession(
        self, request: spb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.CreateSessionResponse:
        async with translate(context, "CreateSession"):
            owner = (await self._auth.app(context)).owner
            runtime = v.word("runtime", request.runtime)
            selector = v.labels("worker_selector", request.worker_selector)
            labels = v.labels("labels", request.labels)
            view = await self._hub.create_session(owner, runtime, selector, labels)
            return spb.CreateSessionResponse(session=session_pb(view))

    async def GetSession(
        self, request: spb.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.GetSessionResponse:
        async with translate(context, "GetSession"):
            owner = (await self._auth.app(context)).owner
            view = await self._hub.get_session(owner, v.required("session_id", request.session_id))
            return spb.GetSessionResponse(session=session_pb(view))

    async def ListSessions(
        self, request: spb.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> spb.ListSessionsResponse:
        async with translate(context, "ListSessions"):
            owner = (await self._auth.app(context)).owner
            size = v.in_range("page_size", request.page_size, 0, _PAGE_MAX) or _PAGE_DEFAULT
            v.enum_value("state", request.state, pb.SessionState)
            state = SessionState(request.state) if request.state else None
            archived = request.archived if request.HasField("archived") else None
            runtime = v.word("runtime", request.runtime) if request.runtime else ""
            labels = v.labels("labels", request.labels)
            by_activity, descending = _order("order_by", request.order_by, _SESSION_ORDERS)
            # What a page token is bound to: every parameter but the page size.
            params = {
                "owner": owner,
                "state": request.state,
                "archived": archived,
                "runtime": runtime,
                "labels": labels,
                "by_activity": by_activity,
                "descending": descending,
            }
            after_id, after_us = "", 0
            if request.page_token:
                after_id, after_us = _pages.decode(request.page_token, params, (str, int))
            query = SessionQuery(
                owner=owner,
                limit=size,
                archived=archived,
                runtime=runtime,
                labels=tuple(sorted(labels.items())),
                by_activity=by_activity,
                descending=descending,
                after_id=after_id,
                after_activity_us=after_us,
            )
            views, last = await self._hub.list_sessions(query, state)
            return spb.ListSessionsResponse(
                sessions=[session_pb(x) for x in views],
                next_page_token=_pages.encode(params, list(last)) if last else "",
            )

    async def UpdateSession(
        self, request: spb.UpdateSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.UpdateSessionResponse:
        async with translate(context, "UpdateSession"):
            owner = (await self._auth.app(context)).owner
            session_id = v.required("session.session_id", request.session.session_id)
            fields = _update_mask(request)
            title = labels = None
            if "title" in fields:
                title = v.title("session.title", request.session.title)
            if "labels" in fields:
                labels = v.labels("session.labels", request.session.labels)
            view = await self._hub.update_session(owner, session_id, title, labels)
            return spb.UpdateSessionResponse(session=session_pb(view))

    async def SendInput(
        self, request: spb.SendInputRequest, context: grpc.aio.ServicerContext
    ) -> spb.SendInputResponse:
        async with translate(context, "SendInput"):
            owner = (await self._auth.app(context)).owner
            session_id = v.required("session_id", request.session_id)
            text = v.text("input", request.input)
            key = v.optional("idempotency_key", request.idempotency_key)
            v.enum_value("policy", request.policy, spb.InputPolicy)
            policy = InputPolicy(request.policy) if request.policy else InputPolicy.ENQUEUE
            schema = v.output_schema("output_schema", request.output_schema)
            turn, dedup = await self._hub.send_input(
                owner, session_id, text, key, policy, schema, _trace_context(context)
            )
            return spb.SendInputResponse(turn=turn_pb(turn), deduplicated=dedup)

    async def GetTurn(self, request: spb.GetTurnRequest, context: grpc.aio.ServicerContext) -> spb.GetTurnResponse:
        async with translate(context, "GetTurn"):
            owner = (await self._auth.app(context)).owner
            turn = await self._hub.get_turn(
                owner, v.required("session_id", request.session_id), v.required("turn_id", request.turn_id)
            )
            return spb.GetTurnResponse(turn=turn_pb(turn))

    async def ListTurns(
        self, request: spb.ListTurnsRequest, context: grpc.aio.ServicerContext
    ) -> spb.ListTurnsResponse:
        async with translate(context, "ListTurns"):
            owner = (await self._auth.app(context)).owner
            session_id = v.required("session_id", request.session_id)
            size = v.in_range("page_size", request.page_size, 0, _PAGE_MAX) or _PAGE_DEFAULT
            descending = _order("order_by", request.order_by, _TURN_ORDERS)
            params = {"owner": owner, "session_id": session_id, "descending": descending}
            after = _pages.decode(request.page_token, params, (int,))[0] if request.page_token else 0
            turns, last = await self._hub.list_turns(owner, session_id, size, after, descending)
            return spb.ListTurnsResponse(
                turns=[turn_pb(t) for t in turns],
                next_page_token=_pages.encode(params, [last]) if last is not None else "",
            )

    async def InterruptTurn(
        self, request: spb.InterruptTurnRequest, context: grpc.aio.ServicerContext
    ) -> spb.InterruptTurnResponse:
        async with translate(context, "InterruptTurn"):
            owner = (await self._auth.app(context)).owner
            turn = await self._hub.interrupt_turn(
                owner,
                v.required("session_id", request.session_id),
                v.optional("turn_id", request.turn_id),
                v.optional("reason", request.reason, max_len=1024),
            )
            return spb.InterruptTurnResponse(turn=turn_pb(turn))

    async def StreamSessionEvents(self, request: spb.StreamSessionEventsRequest, context: grpc.aio.ServicerContext):
        # Yields pre-encoded StreamSessionEventsResponse bytes (see server registration).
        async with translate(context, "StreamSessionEvents"):
            owner = (await self._auth.app(context)).owner
            session_id = v.required("session_id", request.session_id)
            batches = await self._hub.subscribe(owner, session_id, request.after_seq, request.stop_at_end)
            async for batch in batches:
                yield events_message(batch)

    async def GetSnapshot(
        self, request: spb.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> spb.GetSnapshotResponse:
        async with translate(context, "GetSnapshot"):
            owner = (await self._auth.app(context)).owner
            snap = await self._hub.latest_snapshot(owner, v.required("session_id", request.session_id))
            return spb.GetSnapshotResponse(snapshot=snapshot_pb(snap))

    async def CreateSnapshot(
        self, request: spb.CreateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> spb.CreateSnapshotResponse:
        async with translate(context, "CreateSnapshot"):
            owner = (await self._auth.app(context)).owner
            snap = await self._hub.request_snapshot(owner, v.required("session_id", request.session_id))
            return spb.CreateSnapshotResponse(snapshot=snapshot_pb(snap))

    async def ArchiveSession(
        self, request: spb.ArchiveSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.ArchiveSessionResponse:
        async with translate(context, "ArchiveSession"):
            owner = (await self._auth.app(context)).owner
            view = await self._hub.archive_session(owner, v.required("session_id", request.session_id))
            return spb.ArchiveSessionResponse(session=session_pb(view))

    async def UnarchiveSession(
        self, request: spb.UnarchiveSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.UnarchiveSessionResponse:
        async with translate(context, "UnarchiveSession"):
            owner = (await self._auth.app(context)).owner
            view = await self._hub.unarchive_session(owner, v.required("session_id", request.session_id))
            return spb.UnarchiveSessionResponse(session=session_pb(view))

    async def DeleteSession(
        self, request: spb.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.DeleteSessionResponse:
        async with translate(context, "DeleteSession"):
            owner = (await self._auth.app(context)).owner
            session_id = v.required("session_id", request.session_id)
            if request.HasField("delete_after"):
                after_s = request.delete_after.ToNanoseconds() / 1e9
                view = await self._hub.schedule_deletion(owner, session_id, after_s)
                return spb.DeleteSessionResponse(session=session_pb(view))
            await self._hub.delete_session(owner, session_id)
            return spb.DeleteSessionResponse()

    async def CancelSessionDeletion(
        self, request: spb.CancelSessionDeletionRequest, context: grpc.aio.ServicerContext
    ) -> spb.CancelSessionDeletionResponse:
        async with translate(context, "CancelSessionDeletion"):
            owner = (await self._auth.app(context)).owner
            view = await self._hub.cancel_deletion(owner, v.required("session_id", request.session_id))
            return spb.CancelSessionDeletionResponse(session=session_pb(view))

    async def RestoreSession(
        self, request: spb.RestoreSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.RestoreSessionResponse:
        async with translate(context, "RestoreSession"):
            owner = (await self._auth.app(context)).owner
            view = await self._hub.restore_session(
                owner,
                v.required("session_id", request.session_id),
                v.labels("worker_selector", request.worker_selector),
                v.optional("worker_id", request.worker_id),
            )
            return spb.RestoreSessionResponse(session=session_pb(view))

    async def ForkSession(
        self, request: spb.ForkSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.ForkSessionResponse:
        async with translate(context, "ForkSession"):
            owner = (await self._auth.app(context)).owner
            view = await self._hub.fork_session(
                owner, v.required("session_id", request.session_id), v.optional("turn_id", request.turn_id)
            )
            return spb.ForkSessionResponse(session=session_pb(view))

    async def RevertSession(
        self, request: spb.RevertSessionRequest, context: grpc.aio.ServicerContext
    ) -> spb.RevertSessionResponse:
        async with translate(context, "RevertSession"):
            owner = (await self._auth.app(context)).owner
            view = await self._hub.revert_session(
                owner, v.required("session_id", request.session_id), v.required("turn_id", request.turn_id)
            )
            return spb.RevertSessionResponse(session=session_pb(view))

    async def ExportSession(self, request: spb.ExportSessionRequest, context: grpc.aio.ServicerContext):
        async with translate(context, "ExportSession"):
            owner = (await self._auth.app(context)).owner
            bundle = await self._hub.export_session(owner, v.required("session_id", request.session_id))
            blobs = self._workspaces.export_pieces(owner, bundle.checkpoints)
            async for chunk in _bundles.encode(bundle, blobs):
                yield spb.ExportSessionResponse(chunk=chunk)

    async def ImportSession(self, requests, context: grpc.aio.ServicerContext) -> spb.ImportSessionResponse:
        async with translate(context, "ImportSession"):
            caller = await self._auth.app(context)
            owner = caller.owner
            max_mib = self._hub.limits.max_import_mib
            keep_ids = False

            async def chunks() -> AsyncIterator[bytes]:
                nonlocal keep_ids
                first = True
                async for message in requests:
                    if first:
                        first, keep_ids = False, message.keep_session_id
                        if keep_ids and not caller.admin:
                            # Whether an id is taken would tell of another owner's session.
                            raise errors.PermissionDenied(
                                "keep_session_id needs an admin key (moving sessions between control planes is "
                                "an operator's job); import without it to get new ids"
                            )
                    yield message.chunk

            reader = _bundles.BundleReader(max_mib << 20, max_mib)
            try:
                bundle = await _bundle_workspace.read_bundle(reader, chunks(), self._workspaces, owner)
            except errors.DomainError:
                await _drain(requests)
                raise
            view = await self._hub.import_session(owner, bundle, keep_ids)
            return spb.ImportSessionResponse(session=session_pb(view))

    async def RespondToRequest(
        self, request: spb.RespondToRequestRequest, context: grpc.aio.ServicerContext
    ) -> spb.RespondToRequestResponse:
        async with translate(context, "RespondToRequest"):
            owner = (await self._auth.app(context)).owner
            session_id = v.required("session_id", request.session_id)
            request_id = v.required("request_id", request.request_id)
            answer = v.json_object("response_json", request.response_json)
            resolved = await self._hub.respond_to_request(owner, session_id, request_id, answer, request.response_json)
            return spb.RespondToRequestResponse(request=request_pb(resolved))

    async def ListRequests(
        self, request: spb.ListRequestsRequest, context: grpc.aio.ServicerContext
    ) -> spb.ListRequestsResponse:
        async with translate(context, "ListRequests"):
            owner = (await self._auth.app(context)).owner
            session_id = v.required("session_id", request.session_id)
            v.enum_value("state", request.state, pb.RequestState)
            state = RequestState(request.state) if request.state else None
            found = await self._hub.list_requests(owner, session_id, state)
            return spb.ListRequestsResponse(requests=[request_pb(r) for r in found])


async def _drain(requests: AsyncIterator[Any]) -> None:
    """Read the rest of a client stream, within _DRAIN_BYTES and _DRAIN_S (see there)."""
    left = _DRAIN_BYTES
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_DRAIN_S):
            async for message in requests:
                left -= len(message.chunk)
                if left <= 0:
                    return


#: The W3C Trace Context headers a caller's trace continues from.
_TRACE_HEADERS = ("traceparent", "tracestate")


def _trace_context(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The caller's trace context headers (gRPC metadata, or HTTP headers on the Connect port),
    for the turn's trace to continue; the tracer ignores malformed ones."""
    return {
        key: value
        for key, value in context.invocation_metadata() or ()
        if key in _TRACE_HEADERS and isinstance(value, str)
    }
