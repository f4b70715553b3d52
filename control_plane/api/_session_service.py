"""SessionService: the application-facing API, as a thin adapter over the hub."""

from __future__ import annotations

import base64

import grpc

from tether.v1 import resources_pb2 as pb
from tether.v1 import session_service_pb2 as spb

from ..domain import errors
from ..domain.hub import Hub
from ..domain.model import InputPolicy, RequestState, SessionState
from . import _validate as v
from ._auth import Authenticator
from ._convert import events_message, request_pb, session_pb, snapshot_pb, turn_pb
from ._errors import translate

_PAGE_DEFAULT = 100
_PAGE_MAX = 1000


def _encode_page_token(last_id: str, state: int) -> str:
    return base64.urlsafe_b64encode(f"v1|{state}|{last_id}".encode()).decode()


def _decode_page_token(token: str, state: int) -> str:
    try:
        version, token_state, last_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 2)
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidPageToken("page_token is malformed; pass next_page_token unchanged") from None
    if version != "v1" or int(token_state) != state or not last_id:
        raise errors.InvalidPageToken("page_token belongs to a different query; start again without it")
    return last_id


class SessionService:
    def __init__(self, hub: Hub, auth: Authenticator) -> None:
        self._hub = hub
        self._auth = auth

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
            before = _decode_page_token(request.page_token, request.state) if request.page_token else None
            views, last = await self._hub.list_sessions(owner, size, before, state)
            return spb.ListSessionsResponse(
                sessions=[session_pb(x) for x in views],
                next_page_token=_encode_page_token(last, request.state) if last else "",
            )

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
            turn, dedup = await self._hub.send_input(owner, session_id, text, key, policy)
            return spb.SendInputResponse(turn=turn_pb(turn), deduplicated=dedup)

    async def GetTurn(self, request: spb.GetTurnRequest, context: grpc.aio.ServicerContext) -> spb.GetTurnResponse:
        async with translate(context, "GetTurn"):
            owner = (await self._auth.app(context)).owner
            turn = await self._hub.get_turn(
                owner, v.required("session_id", request.session_id), v.required("turn_id", request.turn_id)
            )
            return spb.GetTurnResponse(turn=turn_pb(turn))

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
            await self._hub.delete_session(owner, v.required("session_id", request.session_id))
            return spb.DeleteSessionResponse()

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
