"""WorkerService: the execution workers' API, as a thin adapter over the hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb

from ..domain import errors
from ..domain._snapshots import MAX_SNAPSHOT_ITEMS
from ..domain._workspaces import Workspaces
from ..domain.access import FailureLimiter, Limits, WorkerCaller
from ..domain.hub import Hub
from ..domain.messages import CloseMsg, RevokeMsg
from ..domain.model import WorkerInfo
from ..domain.ports import CredentialStore
from . import _validate as v
from ._auth import Authenticator, peer_address
from ._convert import (
    RESUME_EVENTS_TAG,
    HistoryCodec,
    duration,
    events_message,
    lease_refs,
    runtime_portability,
    ts,
    worker_msg_pb,
)
from ._errors import translate
from ._event_streams import EventStreams
from ._workspaces import WorkspaceCalls, message_sizes

log = logging.getLogger(__name__)

_HISTORY_CHUNK = 500
_END = object()
MAX_OPEN_TURN_IDS = 4096  # LeaseOpen.turn_ids


class WorkerService(WorkspaceCalls):
    def __init__(
        self,
        hub: Hub,
        auth: Authenticator,
        access: CredentialStore,
        limits: Limits,
        workspaces: Workspaces,
        max_message_bytes: int = 4 << 20,
    ) -> None:
        self._hub = hub
        self._max_message_bytes = max_message_bytes
        self._send_piece_bytes, self._send_message_bytes = message_sizes(max_message_bytes)
        self._workspaces = workspaces
        self._auth = auth
        self._access = access
        self._limits = limits
        self._pairing_failures = FailureLimiter(limits.pairing_failures_per_minute)
        self._event_streams = EventStreams(hub, auth, self._worker_id)

    def _worker_id(self, caller: WorkerCaller, given: str, field: str = "worker_id") -> str:
        """The worker id a call may act as: the one its token is bound to, or, for an anonymous
        worker of a --dev control plane, the one it names (if no other owner's worker has it)."""
        v.optional(field, given)  # before `given` is quoted in an error
        if caller.worker_id:
            if given and given != caller.worker_id:
                raise errors.PermissionDenied(
                    f"this worker token is bound to worker {caller.worker_id!r}, not {given!r}",
                    worker_id=caller.worker_id,
                )
            return caller.worker_id
        worker_id = v.word(field, given)
        owner = self._hub.worker_owner(worker_id)
        if owner is not None and owner != caller.owner:
            raise errors.PermissionDenied(
                f"worker id {worker_id!r} is taken by a worker of another credential", worker_id=worker_id
            )
        return worker_id

    async def Pair(self, request: wpb.PairRequest, context: grpc.aio.ServicerContext) -> wpb.PairResponse:
        async with translate(context, "Pair"):
            peer = peer_address(context)
            limit = self._limits.pairing_failures_per_minute
            if not self._pairing_failures.allowed(peer):
                raise errors.LimitExceeded(
                    "pairing_failures_per_minute",
                    limit,
                    "too many invalid pairing codes from this address; wait a minute",
                )
            code = v.required("code", request.code, max_len=32)
            name = v.optional("name", request.name, max_len=256)
            issued = await self._access.pair(code, name)
            if issued is None:
                self._pairing_failures.failed(peer)
                raise self._auth.pairing_refused(errors.PairingCodeInvalid())
            token, secret = issued
            log.info("worker %s paired for a new token %s", token.worker_id, token.token_id)
            return wpb.PairResponse(token=secret, token_id=token.token_id, worker_id=token.worker_id, owner=token.owner)

    async def Register(self, request: wpb.RegisterRequest, context: grpc.aio.ServicerContext) -> wpb.RegisterResponse:
        async with translate(context, "Register"):
            caller = await self._auth.worker(context)
            worker_id = self._worker_id(caller, request.worker_id)
            if not caller.worker_id and await self._access.worker_id_bound(worker_id):
                raise errors.PermissionDenied(
                    f"worker id {worker_id!r} belongs to a paired worker; only its token can register it",
                    worker_id=worker_id,
                )
            if not request.runtimes:
                raise errors.InvalidArgument("runtimes", "name at least one runtime the worker runs")
            runtimes = [v.word(f"runtimes[{i}]", r) for i, r in enumerate(request.runtimes)]
            slots = v.in_range("slots", request.slots, 1, 1024)
            for i, name in enumerate(request.output_schema_runtimes):
                if name not in runtimes:
                    raise errors.InvalidArgument(
                        f"output_schema_runtimes[{i}]", f"{name!r} is not one of the worker's runtimes {runtimes}"
                    )
            portability = runtime_portability(runtimes, request.runtime_portability)
            if len(request.features) > 64:
                raise errors.InvalidArgument("features", f"at most 64 features, got {len(request.features)}")
            features = frozenset(v.word(f"features[{i}]", f, max_len=64) for i, f in enumerate(request.features))
            info = WorkerInfo(
                worker_id=worker_id,
                name=v.optional("name", request.name, max_len=256),
                registration_id="",
                runtimes=runtimes,
                labels=v.labels("labels", request.labels),
                slots=slots,
                version=v.optional("version", request.version, max_len=64),
                owner=caller.owner,
                output_schema_runtimes=list(request.output_schema_runtimes),
                runtime_portability=portability,
                features=features,
            )
            registration_id = await self._hub.register(info)
            t = self._hub.timings
            return wpb.RegisterResponse(
                worker_id=worker_id,
                registration_id=registration_id,
                heartbeat_interval=duration(t.heartbeat_interval_s),
                lease_ttl=duration(t.lease_ttl_s),
                offer_timeout=duration(t.offer_timeout_s),
                reconnect_backoff_initial=duration(t.reconnect_backoff_initial_s),
                reconnect_backoff_max=duration(t.reconnect_backoff_max_s),
                max_events_per_message=t.max_events_per_message,
                liveness_timeout=duration(t.liveness_timeout_s),
                worker_dead_grace=duration(t.worker_dead_grace_s),
                idle_heartbeat_interval=duration(t.idle_heartbeat_interval_s) if t.idle_heartbeat_interval_s else None,
                lease_digests=True,
                snapshot_deltas=True,
                max_message_bytes=self._max_message_bytes,
            )

    async def Heartbeat(
        self, request: wpb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> wpb.HeartbeatResponse:
        async with translate(context, "Heartbeat"):
            caller = await self._auth.worker(context)
            renewed = self._hub.renew(
                self._worker_id(caller, request.worker_id),
                v.required("registration_id", request.registration_id),
                lease_refs(request.leases),
            )
            return wpb.HeartbeatResponse(
                lease_expire_time=ts(renewed.lease_expire_us),
                lost_leases=[wpb.LeaseRef(session_id=s, lease_epoch=e) for s, e in renewed.lost],
            )

    async def Lease(self, request_iterator: AsyncIterator[wpb.LeaseRequest], context: grpc.aio.ServicerContext):
        async with translate(context, "Lease"):
            caller = await self._auth.worker(context)
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("kind") != "open":
                raise errors.InvalidArgument("open", "the first message on a Lease stream must be LeaseOpen")
            worker_id = self._worker_id(caller, first.open.worker_id, "open.worker_id")
            registration_id = v.required("open.registration_id", first.open.registration_id)
            outbox: asyncio.Queue[Any] = asyncio.Queue()
            if len(first.open.turn_ids) > MAX_OPEN_TURN_IDS:
                raise errors.InvalidArgument(
                    "open.turn_ids", f"lists {len(first.open.turn_ids)} turns; at most {MAX_OPEN_TURN_IDS}"
                )
            lost = await self._hub.attach(
                worker_id, registration_id, lease_refs(first.open.leases), outbox, known_turns=set(first.open.turn_ids)
            )
            reader = asyncio.create_task(self._read_lease(worker_id, registration_id, request_iterator, outbox))
            unwatch = self._auth.watch(caller, outbox.put_nowait)
            try:
                yield wpb.LeaseResponse(
                    opened=wpb.LeaseOpened(
                        worker_id=worker_id,
                        lost_leases=[wpb.LeaseRef(session_id=s, lease_epoch=e) for s, e in lost],
                    )
                )
                while True:
                    msg = await outbox.get()
                    if msg is _END:
                        return
                    if isinstance(msg, BaseException):
                        raise msg
                    if isinstance(msg, CloseMsg):
                        raise errors.Unavailable(msg.reason)
                    yield worker_msg_pb(msg)
            finally:
                unwatch()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                self._hub.detach(worker_id, outbox)

    async def _read_lease(
        self,
        worker_id: str,
        registration_id: str,
        requests: AsyncIterator[wpb.LeaseRequest],
        outbox: asyncio.Queue[Any],
    ) -> None:
        accepting: set[asyncio.Task[None]] = set()

        async def accept(a: wpb.AcceptOffer) -> None:
            try:
                await self._hub.accept(worker_id, a.session_id, a.turn_id, a.lease_epoch)
            except errors.DomainError as err:
                outbox.put_nowait(RevokeMsg(a.session_id, a.lease_epoch, err.message))

        timings = self._hub.timings
        idle_liveness = 3 * timings.idle_heartbeat_interval_s
        # Whether the worker's last word said it is idle: the last renewal named no lease and no
        # running turn. A new stream starts idle (LeaseOpen's leases were just settled): an idle
        # worker's first renewal comes one idle interval after it opens. The hub's own view
        # (worker_idle) must agree before the longer silence is allowed.
        said_idle = True
        requests = aiter(requests)
        try:
            while True:
                # Connection liveness: a worker renews every heartbeat interval, so a stream
                # silent this long belongs to a dead or partitioned worker (or a deaf one). An
                # idle worker renews every idle heartbeat interval; HTTP/2 keepalive pings
                # watch its connection meanwhile.
                liveness = timings.liveness_timeout_s
                if said_idle and idle_liveness > liveness and self._hub.worker_idle(worker_id):
                    liveness = idle_liveness
                try:
                    async with asyncio.timeout(liveness):
                        req = await anext(requests, None)
                except TimeoutError:
                    raise errors.Unavailable(
                        f"no heartbeat on the Lease stream for {liveness:g}s; closing it as dead"
                    ) from None
                if req is None:
                    break
                kind = req.WhichOneof("kind")
                if kind == "accept":
                    # Accepts commit in the background so one slow commit does not hold up
                    # the worker's other messages; the grant is pushed when it is durable.
                    task = asyncio.create_task(accept(req.accept))
                    accepting.add(task)
                    task.add_done_callback(accepting.discard)
                elif kind == "renew":
                    renew = req.renew
                    digest = None
                    if renew.HasField("held_digest"):
                        if renew.leases:
                            raise errors.InvalidArgument(
                                "renew.held_digest", "send either the leases or their digest, not both"
                            )
                        digest = (renew.held_digest.count, renew.held_digest.xor)
                    said_idle = renew.running_turns == 0 and not renew.leases and not (digest and digest[0])
                    outbox.put_nowait(self._hub.renew(worker_id, registration_id, lease_refs(renew.leases), digest))
                elif kind == "reject":
                    rejected = req.reject
                    self._hub.reject(worker_id, rejected.session_id, rejected.turn_id, rejected.reason)
                elif kind == "release":
                    released = req.release
                    reason = released.reason[:4096]  # only logged and reported; never worth failing the stream
                    await self._hub.release(worker_id, released.session_id, released.lease_epoch, reason)
                elif kind == "draining":
                    self._hub.worker_draining(worker_id)
                else:
                    raise errors.InvalidArgument(
                        "kind", f"unexpected {kind or 'empty'} message on an open Lease stream"
                    )
            outbox.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced by the stream's writer side, which owns the status
            outbox.put_nowait(exc)
        finally:
            for task in list(accepting):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def StreamEvents(
        self, request_iterator: AsyncIterator[wpb.StreamEventsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[wpb.StreamEventsResponse, None]:
        return self._event_streams.stream_events(request_iterator, context)

    def StreamWorkerEvents(
        self, request_iterator: AsyncIterator[wpb.StreamWorkerEventsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[wpb.StreamWorkerEventsResponse, None]:
        return self._event_streams.stream_worker_events(request_iterator, context)

    async def Resume(self, request: wpb.ResumeRequest, context: grpc.aio.ServicerContext):
        async with translate(context, "Resume"):
            caller = await self._auth.worker(context)
            worker_id = self._worker_id(caller, request.worker_id)
            session_id = v.required("session_id", request.session_id)
            snap, carried, upto, checkpoint, tracks_workspace = await self._hub.resume_source(
                worker_id, session_id, request.lease_epoch, caller.owner
            )
            after = 0
            header = wpb.ResumeResponse()
            if checkpoint is not None:
                header.workspace.chunk_digests.extend(checkpoint.chunk_digests)
                header.workspace.file_count = checkpoint.file_count
                header.workspace.total_bytes = checkpoint.total_bytes
            elif tracks_workspace:
                header.workspace.SetInParent()  # no checkpoint yet: the workspace is empty
            history: list[pb.HistoryItem] = []
            if snap is not None:
                after = snap.seq
                header.snapshot_seq = snap.seq
                header.runtime_metadata_json = snap.runtime_metadata_json
                history = HistoryCodec.decode(snap.history)
            # Responses go out pre-encoded (see _server._PRE_ENCODED): events are sent as the
            # bytes they were stored with, never decoded and re-encoded.
            header.history.extend(history[:_HISTORY_CHUNK])
            yield header.SerializeToString()
            for i in range(_HISTORY_CHUNK, len(history), _HISTORY_CHUNK):
                yield wpb.ResumeResponse(history=history[i : i + _HISTORY_CHUNK]).SerializeToString()
            if carried:
                yield events_message(carried, RESUME_EVENTS_TAG)
            if after < upto:
                async for page in self._hub.events_between(session_id, after, upto):
                    self._auth.check_still_valid(caller)
                    yield events_message(page, RESUME_EVENTS_TAG)

    async def Snapshot(
        self, request_iterator: AsyncIterator[wpb.SnapshotRequest], context: grpc.aio.ServicerContext
    ) -> wpb.SnapshotResponse:
        async with translate(context, "Snapshot"):
            caller = await self._auth.worker(context)
            requests = aiter(request_iterator)
            first = await anext(requests, None)
            if first is None:
                raise errors.InvalidArgument("session_id", "a snapshot upload needs a first chunk with its header")
            worker_id = self._worker_id(caller, first.worker_id)
            session_id = v.required("session_id", first.session_id)
            if first.lease_epoch <= 0:
                raise errors.InvalidArgument("lease_epoch", "is required")
            items = list(first.history)
            async for chunk in requests:
                items.extend(chunk.history)
                if len(items) > MAX_SNAPSHOT_ITEMS:
                    raise errors.InvalidArgument("history", f"at most {MAX_SNAPSHOT_ITEMS} items per snapshot")
            for i, item in enumerate(items):
                v.enum_value(f"history[{i}].role", item.role, pb.HistoryItemRole)
            checkpoint = None
            if first.HasField("workspace"):
                workspace = first.workspace
                checkpoint = await self._workspaces.prepare(
                    caller.owner,
                    session_id,
                    first.seq,
                    list(workspace.chunk_digests),
                    workspace.file_count,
                    workspace.total_bytes,
                )
            self._auth.check_still_valid(caller)
            snap = await self._hub.store_snapshot(
                worker_id,
                session_id,
                first.lease_epoch,
                first.seq,
                v.optional("runtime_metadata_json", first.runtime_metadata_json, max_len=1 << 20),
                HistoryCodec.encode(items),
                len(items),
                first.request_id,
                caller.owner,
                checkpoint,
                base_snapshot_id=v.optional("base_snapshot_id", first.base_snapshot_id, max_len=64),
            )
            return wpb.SnapshotResponse(snapshot_id=snap.snapshot_id, seq=snap.seq)
