"""The worker's event streams: StreamEvents (one session a stream) and StreamWorkerEvents (every
session of a worker on one stream), as a thin adapter over `Hub.ingest`.

Both read batches, hand each to the hub (which fences, deduplicates, numbers and queues it to
commit) and acknowledge what became durable, in the order the batches came. An ack may wait
`Timings.event_ack_delay_s` to cover later batches too (`_acknowledgements`).

On StreamWorkerEvents a batch the hub refuses is answered in-band, for its session alone
(`SessionEventsRefused`, with the status StreamEvents would end with), and the stream goes on
for the others. The worker may already have sent that session's next batches when it reads
the refusal; they no longer continue what was accepted, and are dropped until it resends from
its acknowledged watermark (`errors.WorkerSeqGap` on a refused session). Anything wrong with
the message itself (another worker's id, too many events, a batch without a session) ends the
stream, as it would a StreamEvents stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped]

from tether.v1 import worker_service_pb2 as wpb

from ..domain import errors
from ..domain.access import WorkerCaller
from ..domain.hub import Hub
from ..domain.messages import IncomingEvent, IngestResult
from ..domain.model import TERMINAL_KINDS
from . import _validate as v
from ._auth import Authenticator
from ._convert import incoming_event
from ._errors import status_for, translate

_END = object()
#: (session_id, lease_epoch)
Key = tuple[str, int]
_WRITTEN_BY_CONTROL_PLANE = frozenset({"input_received", "request_resolved", "turn_waiting"})
#: How many sessions a shared stream remembers as loaded, and as refused: a stream lives as long
#: as its worker keeps sending, over any number of sessions. Forgetting one early costs only a
#: cache lookup (loaded), or a second refusal of a batch already on its way (refused).
_REMEMBERED = 4096


def _remember(keys: dict[Key, None], key: Key) -> None:
    keys[key] = None
    if len(keys) > _REMEMBERED:
        del keys[next(iter(keys))]


@dataclass(frozen=True)
class _Refusal:
    key: Key
    status: status_pb2.Status


def _durable(item: Any) -> bool:
    return isinstance(item, tuple) and (item[1] is None or item[1].done())


def _queued(key: Key, result: IngestResult) -> tuple[Key, Any, int, int, bool]:
    """What the reader queues for an ingested batch: (key, commit future, acked, last, urgent).
    A resend (nothing new) or a turn's end is acknowledged at once: the worker waits for that
    ack (its snapshot, a drain); the rest may wait (Timings.event_ack_delay_s)."""
    stored = result.events
    urgent = result.committed is None or (bool(stored) and stored[-1].kind in TERMINAL_KINDS)
    return key, result.committed, result.acked_worker_seq, result.last_seq, urgent


async def _acknowledgements(
    pending: asyncio.Queue[Any], delay: float
) -> AsyncGenerator[tuple[dict[Key, tuple[int, int]], list[_Refusal]], None]:
    """The answers of one event stream, as (acks: {key: (acked_worker_seq, last_seq)},
    refusals), from what its reader queues: `_queued(...)` per batch and `_Refusal` per refused
    one, then _END; an exception ends the stream with it.

    An ack covers every batch of its session durable by then. One that is not urgent waits up
    to `delay` for later batches to cover too; an urgent batch (a turn's end, or nothing new),
    a refusal and the end of the stream send what waits at once. Batches are awaited in the
    order they came (the writer commits in that order), so a session's acks, and its refusal,
    go out in its order.
    """
    loop = asyncio.get_running_loop()
    carried: Any = None  # an item taken off the queue while coalescing, not yet durable
    unsent: dict[Key, tuple[int, int]] = {}  # durable, not acknowledged yet
    due = 0.0  # when `unsent` goes out at the latest
    while True:
        if carried is not None:
            item, carried = carried, None
        elif not unsent:
            item = await pending.get()
        else:
            try:
                async with asyncio.timeout_at(due):
                    item = await pending.get()
            except TimeoutError:
                yield unsent, []
                unsent = {}
                continue
        if item is _END:
            if unsent:
                yield unsent, []
            return
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, _Refusal):
            yield unsent, [item]
            unsent = {}
            continue
        waiting = bool(unsent)
        key, fut, acked, last, urgent = item
        try:
            if fut is not None:
                await fut
            unsent[key] = (acked, last)
            # Coalesce: later batches already durable are covered by the same answer.
            while not pending.empty():
                nxt = pending.get_nowait()
                if not _durable(nxt):
                    carried = nxt
                    break
                key, fut, acked, last, later_urgent = nxt
                urgent = urgent or later_urgent
                if fut is not None:
                    fut.result()
                unsent[key] = (acked, last)
        except errors.DomainError:
            raise
        except Exception as exc:
            raise errors.Unavailable(f"events were not stored; resend them: {exc}") from exc
        if urgent or delay <= 0:
            yield unsent, []
            unsent = {}
        elif not waiting:
            due = loop.time() + delay


def _incoming(events: Any, field: str) -> list[IncomingEvent]:
    incoming = [incoming_event(e) for e in events]
    for i, e in enumerate(incoming):
        if not e.kind:
            raise errors.InvalidArgument(f"{field}[{i}].body", "must set one event kind")
        if e.kind in _WRITTEN_BY_CONTROL_PLANE:
            raise errors.InvalidArgument(f"{field}[{i}].body", f"{e.kind} is written by the control plane")
    return incoming


class EventStreams:
    """Serves StreamEvents and StreamWorkerEvents for `WorkerService`; `worker_id(caller, given)`
    is the service's check of the worker id a call may act as."""

    def __init__(self, hub: Hub, auth: Authenticator, worker_id: Callable[[WorkerCaller, str], str]) -> None:
        self._hub = hub
        self._auth = auth
        self._worker_id = worker_id

    async def _answer(
        self,
        caller: WorkerCaller,
        read: Callable[[asyncio.Queue[Any]], Any],
    ) -> AsyncGenerator[tuple[dict[Key, tuple[int, int]], list[_Refusal]], None]:
        """Run `read(pending)` as the stream's reader and yield its answers until it ends."""
        pending: asyncio.Queue[Any] = asyncio.Queue()
        reader = asyncio.create_task(read(pending))
        unwatch = self._auth.watch(caller, pending.put_nowait)
        try:
            async with contextlib.aclosing(_acknowledgements(pending, self._hub.timings.event_ack_delay_s)) as acks:
                async for answer in acks:
                    yield answer
        finally:
            unwatch()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    # -- StreamEvents ----------------------------------------------------------------------

    async def stream_events(
        self, request_iterator: AsyncIterator[wpb.StreamEventsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[wpb.StreamEventsResponse, None]:
        async with translate(context, "StreamEvents"):
            caller = await self._auth.worker(context)
            requests = aiter(request_iterator)
            first = await anext(requests, None)
            if first is None:
                return
            worker_id = self._worker_id(caller, first.worker_id)
            session_id = v.required("session_id", first.session_id)
            epoch = first.lease_epoch
            if epoch <= 0:
                raise errors.InvalidArgument("lease_epoch", "is required (the epoch from the offer)")
            await self._hub.load_for_worker(worker_id, session_id, epoch, caller.owner)

            def read(pending: asyncio.Queue[Any]) -> Any:
                return self._read_session(worker_id, caller.owner, session_id, epoch, first, requests, pending)

            async with contextlib.aclosing(self._answer(caller, read)) as answers:
                async for acks, _ in answers:  # this reader refuses nothing in-band
                    for acked, last in acks.values():
                        yield wpb.StreamEventsResponse(acked_worker_seq=acked, last_seq=last)

    async def _read_session(
        self,
        worker_id: str,
        owner: str,
        session_id: str,
        epoch: int,
        first: wpb.StreamEventsRequest,
        requests: AsyncIterator[wpb.StreamEventsRequest],
        pending: asyncio.Queue[Any],
    ) -> None:
        max_events = self._hub.timings.max_events_per_message
        key = (session_id, epoch)
        try:
            req: wpb.StreamEventsRequest | None = first
            while req is not None:
                if req.session_id and req.session_id != session_id:
                    raise errors.InvalidArgument("session_id", "one StreamEvents stream carries one session")
                if req.lease_epoch and req.lease_epoch != epoch:
                    raise errors.InvalidArgument("lease_epoch", "one StreamEvents stream carries one lease epoch")
                if len(req.events) > max_events:
                    raise errors.InvalidArgument("events", f"at most {max_events} events per message")
                if req.events:
                    incoming = _incoming(req.events, "events")
                    pending.put_nowait(_queued(key, self._hub.ingest(worker_id, session_id, epoch, incoming, owner)))
                req = await anext(requests, None)
            pending.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            pending.put_nowait(exc)

    # -- StreamWorkerEvents ----------------------------------------------------------------

    async def stream_worker_events(
        self, request_iterator: AsyncIterator[wpb.StreamWorkerEventsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[wpb.StreamWorkerEventsResponse, None]:
        async with translate(context, "StreamWorkerEvents"):
            caller = await self._auth.worker(context)
            requests = aiter(request_iterator)
            first = await anext(requests, None)
            if first is None:
                return
            worker_id = self._worker_id(caller, first.worker_id)

            def read(pending: asyncio.Queue[Any]) -> Any:
                return self._read_worker(worker_id, caller.owner, first, requests, pending)

            async with contextlib.aclosing(self._answer(caller, read)) as answers:
                async for acks, refusals in answers:
                    answer = wpb.StreamWorkerEventsResponse()
                    for (session_id, epoch), (acked, last) in acks.items():
                        answer.acks.add(session_id=session_id, lease_epoch=epoch, acked_worker_seq=acked, last_seq=last)
                    for r in refusals:
                        answer.refused.add(session_id=r.key[0], lease_epoch=r.key[1]).status.CopyFrom(r.status)
                    yield answer

    async def _read_worker(
        self,
        worker_id: str,
        owner: str,
        first: wpb.StreamWorkerEventsRequest,
        requests: AsyncIterator[wpb.StreamWorkerEventsRequest],
        pending: asyncio.Queue[Any],
    ) -> None:
        max_events = self._hub.timings.max_events_per_message
        loaded: dict[Key, None] = {}  # sessions whose record is in memory (loaded once a stream)
        refused: dict[Key, None] = {}  # refused, and not resent from the watermark since
        try:
            req: wpb.StreamWorkerEventsRequest | None = first
            while req is not None:
                if req.worker_id and req.worker_id != worker_id:
                    raise errors.InvalidArgument("worker_id", "one StreamWorkerEvents stream carries one worker")
                if sum(len(b.events) for b in req.batches) > max_events:
                    raise errors.InvalidArgument("batches", f"at most {max_events} events per message, in all batches")
                for i, batch in enumerate(req.batches):  # the whole message is checked first
                    v.required(f"batches[{i}].session_id", batch.session_id)
                    if batch.lease_epoch <= 0:
                        raise errors.InvalidArgument(
                            f"batches[{i}].lease_epoch", "is required (the epoch from the offer)"
                        )
                cold = [k for k in dict.fromkeys((b.session_id, b.lease_epoch) for b in req.batches) if k not in loaded]
                not_loaded = await self._load(worker_id, owner, cold, loaded) if cold else {}
                for i, batch in enumerate(req.batches):
                    session_id, epoch = batch.session_id, batch.lease_epoch
                    key = (session_id, epoch)
                    try:
                        if key in not_loaded:
                            raise not_loaded[key]
                        if not batch.events:
                            continue
                        incoming = _incoming(batch.events, f"batches[{i}].events")
                        result = self._hub.ingest(worker_id, session_id, epoch, incoming, owner)
                    except errors.DomainError as err:
                        if isinstance(err, errors.WorkerSeqGap) and key in refused:
                            continue  # sent before the worker read the refusal: dropped
                        pending.put_nowait(_Refusal(key, status_for(err)[1]))
                        _remember(refused, key)
                    else:
                        refused.pop(key, None)
                        pending.put_nowait(_queued(key, result))
                req = await anext(requests, None)
            pending.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            pending.put_nowait(exc)

    async def _load(
        self, worker_id: str, owner: str, keys: list[Key], loaded: dict[Key, None]
    ) -> dict[Key, errors.DomainError]:
        """Load and check the sessions of `keys` at once, not one after another: a worker
        resending after a control-plane restart names many sessions no longer in memory, and
        each load is a read. Returns why each one that failed did (its batches are refused);
        anything but a DomainError ends the stream, as a failed load did before."""
        results = await asyncio.gather(
            *(self._hub.load_for_worker(worker_id, session_id, epoch, owner) for session_id, epoch in keys),
            return_exceptions=True,
        )
        failed: dict[Key, errors.DomainError] = {}
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, errors.DomainError):
                failed[key] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                _remember(loaded, key)
        return failed
