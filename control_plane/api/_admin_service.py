"""AdminService: workers, pairing codes and worker tokens, each scoped to the caller's owner
(an admin key without an owner sees every owner's workers)."""

from __future__ import annotations

import grpc

from tether.v1 import admin_service_pb2 as apb

from ..domain._workspaces import Workspaces
from ..domain.access import Limits, WorkerToken
from ..domain.errors import InvalidArgument, PermissionDenied
from ..domain.hub import Hub
from ..domain.messages import WorkerStatus
from ..domain.ports import CredentialStore
from . import _validate as v
from ._auth import Authenticator, owner_name
from ._convert import portability_pb, ts
from ._errors import translate

PAIRING_TTL_DEFAULT_S = 600
PAIRING_TTL_MAX_S = 24 * 3600


def _status_pb(st: WorkerStatus) -> apb.WorkerStatus:
    info = st.info
    return apb.WorkerStatus(
        worker_id=info.worker_id,
        name=info.name,
        runtimes=info.runtimes,
        labels=info.labels,
        slots=info.slots,
        running_turns=st.running_turns,
        held_sessions=st.held_sessions,
        connected=st.connected,
        draining=st.draining,
        register_time=ts(info.registered_at_us),
        version=info.version,
        owner=info.owner,
        runtime_portability=portability_pb(info.runtime_portability),
    )


def token_pb(t: WorkerToken) -> apb.WorkerToken:
    out = apb.WorkerToken(
        token_id=t.token_id, worker_id=t.worker_id, name=t.name, owner=t.owner, create_time=ts(t.create_time_us)
    )
    if t.revoke_time_us:
        out.revoke_time.CopyFrom(ts(t.revoke_time_us))
    return out


class AdminService:
    def __init__(
        self, hub: Hub, auth: Authenticator, access: CredentialStore, limits: Limits, workspaces: Workspaces
    ) -> None:
        self._hub = hub
        self._workspaces = workspaces
        self._auth = auth
        self._access = access
        self._limits = limits

    async def ListWorkers(
        self, request: apb.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListWorkersResponse:
        async with translate(context, "ListWorkers"):
            caller = await self._auth.app(context, owner_required=False)
            statuses = self._hub.worker_statuses(caller.owner or None)
            return apb.ListWorkersResponse(workers=[_status_pb(st) for st in statuses])

    async def DrainWorker(
        self, request: apb.DrainWorkerRequest, context: grpc.aio.ServicerContext
    ) -> apb.DrainWorkerResponse:
        async with translate(context, "DrainWorker"):
            caller = await self._auth.app(context, owner_required=False)
            worker_id = v.required("worker_id", request.worker_id)
            grace_s = None
            if request.HasField("grace"):
                grace_s = request.grace.seconds + request.grace.nanos / 1e9
                if grace_s < 0:
                    raise InvalidArgument("grace", "must not be negative")
            status = self._hub.drain_worker(caller.owner or None, worker_id, grace_s)
            return apb.DrainWorkerResponse(worker=_status_pb(status))

    async def CreatePairingCode(
        self, request: apb.CreatePairingCodeRequest, context: grpc.aio.ServicerContext
    ) -> apb.CreatePairingCodeResponse:
        async with translate(context, "CreatePairingCode"):
            caller = await self._auth.app(context)
            ttl_s = float(PAIRING_TTL_DEFAULT_S)
            if request.HasField("ttl"):
                ttl_s = request.ttl.seconds + request.ttl.nanos / 1e9
                if not 1 <= ttl_s <= PAIRING_TTL_MAX_S:
                    raise InvalidArgument("ttl", f"must be between 1s and {PAIRING_TTL_MAX_S}s (got {ttl_s:g}s)")
            code, expire_us = await self._access.create_pairing_code(
                caller.owner, int(ttl_s * 1e6), self._limits.max_pending_pairing_codes_per_owner
            )
            return apb.CreatePairingCodeResponse(code=code, expire_time=ts(expire_us), owner=caller.owner)

    async def ListWorkerTokens(
        self, request: apb.ListWorkerTokensRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListWorkerTokensResponse:
        async with translate(context, "ListWorkerTokens"):
            caller = await self._auth.app(context)
            tokens = await self._access.list_worker_tokens(caller.owner)
            return apb.ListWorkerTokensResponse(tokens=[token_pb(t) for t in tokens])

    async def RevokeWorkerToken(
        self, request: apb.RevokeWorkerTokenRequest, context: grpc.aio.ServicerContext
    ) -> apb.RevokeWorkerTokenResponse:
        async with translate(context, "RevokeWorkerToken"):
            caller = await self._auth.app(context)
            token = await self._access.revoke_worker_token(caller.owner, v.required("token_id", request.token_id))
            self._auth.revoked(token)
            return apb.RevokeWorkerTokenResponse(token=token_pb(token))

    async def PurgeOwnerData(self, request: apb.PurgeOwnerDataRequest, context: grpc.aio.ServicerContext):
        async with translate(context, "PurgeOwnerData"):
            caller = await self._auth.app(context, owner_required=False)
            named = owner_name(request.owner, "owner") if request.owner else ""
            if caller.bound:
                if named and named != caller.owner:
                    raise PermissionDenied(
                        "an owner key may purge only its own owner's data; leave owner empty, or use an admin key"
                    )
                owner = caller.owner
            elif caller.admin:
                owner = named or caller.owner  # an admin key may name the owner in the header too
                if not owner:
                    raise InvalidArgument("owner", "is required with an admin key: name the owner to purge")
            else:
                raise PermissionDenied("PurgeOwnerData needs an admin key or the owner's own key, not a backend key")
            progress = apb.PurgeOwnerDataResponse()
            async for deleted in self._hub.purge_sessions(owner):
                progress.sessions_deleted = deleted
                yield progress
            for token in await self._access.list_worker_tokens(owner):
                if not token.revoke_time_us:
                    self._auth.revoked(await self._access.revoke_worker_token(owner, token.token_id))
            # The sessions are gone, so no checkpoint names the owner's workspace blobs now.
            await self._workspaces.blobs.delete_owner(owner)
            self._workspaces.forget_owner(owner)
            tokens, workers, codes = await self._access.purge_owner(owner)
            progress.worker_tokens_deleted, progress.workers_deleted, progress.pairing_codes_deleted = (
                tokens,
                workers,
                codes,
            )
            progress.done = True
            yield progress
