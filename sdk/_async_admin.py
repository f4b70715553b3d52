"""`AdminCalls`: the `tether.v1.AdminService` calls of `AsyncClient` (workers, pairing codes,
worker tokens, owner purges), mixed into it."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import grpc
from google.protobuf import duration_pb2

from tether.v1 import admin_service_pb2 as admin_pb

from . import _convert
from ._async_boundary import ClientBoundary
from ._errors import translate_rpc_error
from ._models import PairingCode, PurgeProgress, WorkerStatus, WorkerToken

__all__ = ["AdminCalls"]


class AdminCalls(ClientBoundary):
    """`AsyncClient`'s AdminService calls."""

    async def list_workers(self, *, timeout_s: float | None = None) -> list[WorkerStatus]:
        """Every worker the control plane knows, connected ones first."""
        response = await self._unary(self._admin_stub.ListWorkers, admin_pb.ListWorkersRequest(), timeout_s)
        return [_convert.worker_status_from_proto(w) for w in response.workers]

    async def drain_worker(
        self,
        worker_id: str,
        grace_s: float | None = None,
        *,
        timeout_s: float | None = None,
    ) -> WorkerStatus:
        """Ask a connected worker to drain: no new offers, running turns get `grace_s`
        (None: the worker's own setting) to finish, then final snapshots and releases.
        Returns the worker as it is after the request; `WorkerNotConnectedError` when it has
        no open Lease stream."""
        request = admin_pb.DrainWorkerRequest(worker_id=worker_id)
        if grace_s is not None:
            if grace_s < 0:
                raise ValueError(f"grace_s must be 0 or more, got {grace_s}")
            request.grace.CopyFrom(_duration(grace_s))
        response = await self._unary(self._admin_stub.DrainWorker, request, timeout_s)
        return _convert.worker_status_from_proto(response.worker)

    async def create_pairing_code(self, ttl_s: float | None = None, *, timeout_s: float | None = None) -> PairingCode:
        """A one-time code (default life 10 minutes) that a worker exchanges for a worker
        token of this client's owner: `tether worker pair --code CODE`."""
        request = admin_pb.CreatePairingCodeRequest()
        if ttl_s is not None:
            request.ttl.CopyFrom(_duration(ttl_s))
        response = await self._unary(self._admin_stub.CreatePairingCode, request, timeout_s)
        return PairingCode(response.code, _convert.timestamp_from_proto(response.expire_time), response.owner)

    async def list_worker_tokens(self, *, timeout_s: float | None = None) -> list[WorkerToken]:
        """The owner's worker tokens, newest first, revoked ones included."""
        response = await self._unary(self._admin_stub.ListWorkerTokens, admin_pb.ListWorkerTokensRequest(), timeout_s)
        return [_convert.worker_token_from_proto(t) for t in response.tokens]

    async def revoke_worker_token(self, token_id: str, *, timeout_s: float | None = None) -> WorkerToken:
        """Revoke a worker token: the worker's streams end at once (UNAUTHENTICATED) and its
        sessions move to other workers by the usual lease rules."""
        request = admin_pb.RevokeWorkerTokenRequest(token_id=token_id)
        response = await self._unary(self._admin_stub.RevokeWorkerToken, request, timeout_s)
        return _convert.worker_token_from_proto(response.token)

    async def purge_owner_data(
        self, owner: str = "", *, timeout_s: float | None = None
    ) -> AsyncGenerator[PurgeProgress, None]:
        """Delete everything of one owner (sessions with all they hold, worker tokens, workers,
        pairing codes; not API keys), yielding progress after each batch; the last has `done`.
        An owner key purges its own owner (leave `owner` empty); an admin key names one. Running
        it again finishes a purge that was cut short."""
        if self._closed:
            raise RuntimeError("AsyncClient is closed")
        request = admin_pb.PurgeOwnerDataRequest(owner=owner)
        call = self._admin_stub.PurgeOwnerData(request, timeout=self._deadline(timeout_s), metadata=self._metadata)
        try:
            async for p in call:
                yield PurgeProgress(
                    p.sessions_deleted, p.worker_tokens_deleted, p.workers_deleted, p.pairing_codes_deleted, p.done
                )
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, **self._transport) from exc
        finally:
            call.cancel()


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))
