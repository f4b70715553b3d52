"""The worker's one event stream: StreamWorkerEvents, carrying the events of every session it
holds.

Each session keeps its own outbox (`_events.EventOutbox`: numbering, the unacknowledged
events, the waiters); this stream only moves them. Whenever its previous write completes it
writes one message with what every ready outbox has, oldest session first (a session that
still has more goes to the back), up to the server's events-per-message limit and a byte
budget. So when the worker is idle an event leaves at once, and under load a message carries
many sessions' events: one message, one read and one ack for all of them instead of one each.

Acks and refusals come back per session. A refusal that says the lease is lost stops that
session; any other makes its outbox resend from its acknowledged watermark after a pause,
while the other sessions go on. When the stream breaks, every outbox resends what was not
acknowledged on the next one (at-least-once with stable numbers, as on StreamEvents: the
control plane drops what it already stored). The stream is opened when there is something to
send and closed after `IDLE_CLOSE_S` with everything acknowledged.

A control plane that answers UNIMPLEMENTED predates the stream: every outbox, from then on,
sends on a StreamEvents stream of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import grpc

from tether.execution_worker._backoff import Backoff
from tether.execution_worker._errors import describe
from tether.execution_worker._events import IDLE_CLOSE_S, MAX_BATCH_BYTES, EventOutbox
from tether.v1 import worker_service_pb2, worker_service_pb2_grpc

_log = logging.getLogger(__name__)

#: (session_id, lease_epoch)
_Key = tuple[str, int]


class EventStream:
    """Moves every attached outbox's events on one StreamWorkerEvents call at a time."""

    def __init__(
        self,
        *,
        stub: worker_service_pb2_grpc.WorkerServiceStub,
        worker_id: str,
        max_events_per_message: Callable[[], int],
        new_backoff: Callable[[], Backoff],
        rpc_timeout_s: float = 10.0,
    ) -> None:
        self._stub = stub
        self._worker_id = worker_id
        self._max_events = max_events_per_message
        self._new_backoff = new_backoff
        self._rpc_timeout_s = rpc_timeout_s
        self._outboxes: dict[_Key, EventOutbox] = {}
        self._ready: dict[_Key, None] = {}  # an ordered set: the next message takes from the first
        self._wake = asyncio.Event()
        #: False once the control plane answered UNIMPLEMENTED: outboxes send on their own.
        self.served = True
        self._task: asyncio.Task[None] | None = None
        self._acks = 0  # answers read, for the reconnect backoff

    # -- what outboxes call ------------------------------------------------------------------

    def attach(self, outbox: EventOutbox) -> bool:
        """Carry `outbox`'s events; False when the control plane does not serve this stream."""
        if not self.served:
            return False
        self._outboxes[(outbox.session_id, outbox.lease_epoch)] = outbox
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event stream")
        return True

    def detach(self, outbox: EventOutbox) -> None:
        key = (outbox.session_id, outbox.lease_epoch)
        if self._outboxes.get(key) is outbox:
            del self._outboxes[key]
            self._ready.pop(key, None)

    def ready(self, outbox: EventOutbox) -> None:
        """`outbox` has events to send."""
        key = (outbox.session_id, outbox.lease_epoch)
        if key not in self._ready:
            self._ready[key] = None
            self._wake.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # -- the stream --------------------------------------------------------------------------

    def _all_acked(self) -> bool:
        return all(o.all_acked for o in self._outboxes.values())

    async def _run(self) -> None:
        backoff = self._new_backoff()
        while True:
            if not self._ready:
                self._wake.clear()
                if not self._ready:
                    await self._wake.wait()
                continue
            call = self._stub.StreamWorkerEvents()
            acks_before = self._acks
            try:
                await self._pump(call)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._fall_back(error)
                    return
                if self._all_acked():
                    _log.debug("idle event stream ended: %s", describe(error))
                else:
                    _log.warning("event stream broke: %s", describe(error))
            finally:
                call.cancel()
                self._rewind()
            if self._acks > acks_before:
                backoff.reset()
            if self._all_acked():
                continue  # a clean idle close, or nothing was waiting: reconnect when needed
            delay = backoff.next_delay()
            _log.info("event stream reconnecting in %.2fs", delay)
            await asyncio.sleep(delay)

    def _rewind(self) -> None:
        """Whatever the ended call did not get acknowledged goes again on the next one."""
        for outbox in list(self._outboxes.values()):
            outbox.rewind()
            if outbox.has_unsent:
                self.ready(outbox)

    def _fall_back(self, error: grpc.aio.AioRpcError) -> None:
        _log.info(
            "the control plane does not serve StreamWorkerEvents (%s): one StreamEvents stream a session",
            describe(error),
        )
        self.served = False
        self._task = None
        outboxes = list(self._outboxes.values())
        self._outboxes.clear()
        self._ready.clear()
        for outbox in outboxes:
            outbox.fall_back()

    async def _pump(self, call: grpc.aio.StreamStreamCall) -> None:
        """Run one call until it ends; raises its AioRpcError."""
        reader = asyncio.create_task(self._read(call))
        writer = asyncio.create_task(self._write(call))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done and writer.exception() is None:
                # Idle half-close: let the server finish acknowledging, then end.
                try:
                    async with asyncio.timeout(self._rpc_timeout_s):
                        await asyncio.shield(reader)
                except TimeoutError:
                    _log.debug("event stream: no end after the half-close")
        finally:
            for task in (reader, writer):
                task.cancel()
            call.cancel()
            results = await asyncio.gather(reader, writer, return_exceptions=True)
        # The reader sees the server's status with its trailers; prefer its error.
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                raise result
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                _log.debug("event stream: %r", result)

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            answer = cast(worker_service_pb2.StreamWorkerEventsResponse, response)
            self._acks += 1
            outboxes = self._outboxes
            for ack in answer.acks:
                outbox = outboxes.get((ack.session_id, ack.lease_epoch))
                if outbox is not None:
                    outbox.acknowledged(ack.acked_worker_seq, ack.last_seq)
            for refusal in answer.refused:
                outbox = outboxes.get((refusal.session_id, refusal.lease_epoch))
                if outbox is not None:
                    outbox.refused(refusal.status)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        header_sent = False
        while True:
            if not self._ready:
                self._wake.clear()
                if not self._ready:
                    try:
                        async with asyncio.timeout(IDLE_CLOSE_S):
                            await self._wake.wait()
                    except TimeoutError:
                        if not self._ready and self._all_acked():
                            await call.done_writing()
                            return
                continue
            request = self._next_message()
            if not request.batches:
                continue
            if not header_sent:
                request.worker_id = self._worker_id
                header_sent = True
            await call.write(request)

    def _next_message(self) -> worker_service_pb2.StreamWorkerEventsRequest:
        """Take from the ready outboxes, oldest first, what one message holds."""
        request = worker_service_pb2.StreamWorkerEventsRequest()
        events_left = max(1, self._max_events())
        bytes_left = MAX_BATCH_BYTES
        while self._ready and events_left > 0:
            key = next(iter(self._ready))
            del self._ready[key]
            outbox = self._outboxes.get(key)
            if outbox is None or not outbox.has_unsent:
                continue
            events, size = outbox.take(events_left, bytes_left, at_least_one=not request.batches)
            if events:
                request.batches.append(
                    worker_service_pb2.SessionEventBatch(session_id=key[0], lease_epoch=key[1], events=events)
                )
                events_left -= len(events)
                bytes_left -= size
            if outbox.has_unsent:
                self._ready[key] = None  # to the back: the others' turn first
            if not events:
                break  # the next event does not fit: the next message
        return request
