"""The per-session event outbox: numbers a leased session's events and delivers them until the
control plane acknowledges them: on the worker's one StreamWorkerEvents stream, shared by
every session (`_event_stream.EventStream`), or, with a control plane that predates it, on a
StreamEvents stream of its own.

Delivery is at-least-once with stable numbers: every event gets the next `worker_seq` of its
(session, lease epoch) when emitted and keeps it across reconnects, so the server can drop the
duplicates a resend produces. A session gets one outbox per lease epoch it holds; once the
session leaves the worker (a cooled one is released) a later grant, even at the same epoch,
is a new lease for which the control plane numbers from 1 again. Throughput comes from
batching, not from waiting: the sender writes everything pending (up to the server's
per-message limit) whenever its previous write completes, so under load batches grow by
themselves and when idle an event leaves at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

from tether.execution_worker._backoff import Backoff
from tether.execution_worker._errors import describe, describe_status, is_lease_lost, status_lease_lost
from tether.v1 import resources_pb2, worker_service_pb2, worker_service_pb2_grpc

if TYPE_CHECKING:
    from tether.execution_worker._event_stream import EventStream

_log = logging.getLogger(__name__)

#: Byte budget of one StreamEventsRequest (the server's default receive limit is 4 MiB, and
#: output chunks can be a few hundred KiB each).
MAX_BATCH_BYTES = 1024 * 1024

#: An idle stream (everything acknowledged, nothing new) is closed after this long, so a
#: worker holding many quiet sessions does not pin a server stream for each.
IDLE_CLOSE_S = 30.0

#: How long an event emitted with `linger=True` (a turn's `turn_started`) waits for company:
#: the next event emitted without it sends both at once, so a short turn's events leave in one
#: StreamEvents message (one ack, one commit, one message to each subscriber) instead of two.
LINGER_S = 0.02


class EventOutbox:
    """Unacknowledged events of one session under one lease epoch, and the task sending them.

    `emit()` never blocks and never fails: events are kept until acknowledged or until the
    lease is lost (then `on_lease_lost(outbox)` is called once and everything is discarded).
    """

    def __init__(
        self,
        *,
        stub: worker_service_pb2_grpc.WorkerServiceStub,
        worker_id: str,
        session_id: str,
        lease_epoch: int,
        max_events_per_message: Callable[[], int],
        new_backoff: Callable[[], Backoff],
        on_lease_lost: Callable[[EventOutbox], None],
        rpc_timeout_s: float = 10.0,
        stream: EventStream | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.session_id = session_id
        self.lease_epoch = lease_epoch
        self._stub = stub
        self._max_batch = max_events_per_message
        self._new_backoff = new_backoff
        self._on_lease_lost = on_lease_lost
        self._rpc_timeout_s = rpc_timeout_s
        # Unacknowledged events; _pending[0].worker_seq == _acked + 1.
        self._pending: list[worker_service_pb2.WorkerEvent] = []
        self._sizes: list[int] = []  # serialized size of each pending event
        # worker_seq of the last emitted event.
        self._emitted = 0
        self._acked = 0
        self._last_seq = 0
        self._next_send = 1
        self._new_events = asyncio.Event()
        self._ack_waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._closed = False
        self.lease_lost = False
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        # The worker's shared stream; `_attached` while this outbox sends on it.
        self._stream = stream
        self._attached = False
        # A batch the shared stream refused (not a lost lease): resend after this pause.
        self._refusals = new_backoff()
        self._paused: asyncio.TimerHandle | None = None

    # -- producer side ----------------------------------------------------------------------

    def start(self) -> None:
        """Start sending: on the shared stream when the worker has one that the control plane
        serves, else on a StreamEvents stream of this outbox's own."""
        if self._task is not None or self._attached or self._closed:
            return
        if self._stream is not None and self._stream.attach(self):
            self._attached = True
            self._mark_ready()
            return
        self._task = asyncio.create_task(self._run(), name=f"outbox {self.session_id}@{self.lease_epoch}")

    def fall_back(self) -> None:
        """The control plane does not serve the shared stream: send on a stream of its own."""
        self._attached = False
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        self.start()

    def emit(self, turn_id: str, body: resources_pb2.EventBody, *, linger: bool = False) -> int:
        """Queue one event; returns its worker_seq (0 when the outbox is closed). With `linger`
        the event waits up to `LINGER_S` for the next one, to leave in the same message (a
        sender already busy writing takes it when its write completes, as any event)."""
        if self._closed:
            return 0
        self._emitted += 1
        event = worker_service_pb2.WorkerEvent(worker_seq=self._emitted, turn_id=turn_id, body=body)
        self._pending.append(event)
        self._sizes.append(event.ByteSize())
        if linger:
            if self._linger is None:
                self._linger = asyncio.get_running_loop().call_later(LINGER_S, self._flush_lingering)
        else:
            self._flush_lingering()
        return self._emitted

    def _flush_lingering(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._new_events.set()
        self._mark_ready()

    def _mark_ready(self) -> None:
        if self._attached and self.has_unsent and self._stream is not None:
            self._stream.ready(self)

    def unacked_turn_ids(self) -> set[str]:
        """The turns of the events not acknowledged yet."""
        return {event.turn_id for event in self._pending}

    @property
    def acked_worker_seq(self) -> int:
        return self._acked

    @property
    def last_seq(self) -> int:
        """The session's last stored seq as of the latest acknowledgement (the watermark a
        snapshot may claim once everything is acknowledged)."""
        return self._last_seq

    @property
    def all_acked(self) -> bool:
        return self._acked >= self._emitted

    async def wait_acked(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is acknowledged. False on timeout, or when the
        outbox closes (lease lost, session dropped) first."""
        target = self._emitted
        if self._acked >= target:
            return True
        if self._closed:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (target, future)
        self._ack_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            return False
        finally:
            if entry in self._ack_waiters:
                self._ack_waiters.remove(entry)

    async def close(self) -> None:
        """Stop sending and discard whatever is unacknowledged. Idempotent; safe to call from
        the outbox's own callback."""
        self._closed = True
        self._detach()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._pending.clear()
        self._sizes.clear()
        self._resolve_waiters(False)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _detach(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._attached and self._stream is not None:
            self._stream.detach(self)
        self._attached = False

    def _lost(self) -> None:
        _log.warning(
            "session %s lost its lease (epoch %d) while sending events; stopping it", self.session_id, self.lease_epoch
        )
        self.lease_lost = True
        self._closed = True
        self._detach()
        self._pending.clear()
        self._sizes.clear()
        self._resolve_waiters(False)
        self._on_lease_lost(self)

    # -- what a sender calls ---------------------------------------------------------------------

    @property
    def has_unsent(self) -> bool:
        """Events wait to be sent, and nothing holds them back (a pause after a refusal)."""
        return not self._closed and self._paused is None and self._next_send <= self._emitted

    def take(
        self, max_events: int, max_bytes: int, at_least_one: bool
    ) -> tuple[list[worker_service_pb2.WorkerEvent], int]:
        """The next events to send, oldest first: at most `max_events`, and within `max_bytes`
        (but one, however large, when `at_least_one`); with their serialized size. They count
        as sent: `rewind()` sends them again."""
        if self._next_send <= self._acked:
            self._next_send = self._acked + 1  # acked past what was sent: skip ahead
        start = self._next_send - self._acked - 1
        end = min(len(self._pending), start + max(1, max_events))
        size = 0
        for i in range(start, end):
            if size + self._sizes[i] > max_bytes and (i > start or not at_least_one):
                end = i
                break
            size += self._sizes[i]
        batch = self._pending[start:end]
        self._next_send += len(batch)
        return batch, size

    def rewind(self) -> None:
        """The stream broke: what was sent and not acknowledged goes again."""
        self._next_send = self._acked + 1

    def acknowledged(self, acked_worker_seq: int, last_seq: int) -> None:
        acked = min(acked_worker_seq, self._emitted)
        if last_seq:
            self._last_seq = max(self._last_seq, last_seq)
        if acked <= self._acked:
            return
        del self._pending[: acked - self._acked]
        del self._sizes[: acked - self._acked]
        self._acked = acked
        self._refusals.reset()
        self._resolve_waiters()

    def refused(self, status: status_pb2.Status) -> None:
        """The shared stream refused a batch of this session: a lost lease stops it; anything
        else is resent from the acknowledged watermark after a pause (as a broken StreamEvents
        stream is reconnected)."""
        if self._closed:
            return
        if status_lease_lost(status):
            self._lost()
            return
        self.rewind()
        delay = self._refusals.next_delay()
        _log.warning(
            "events of session %s were refused (%s); resending in %.2fs",
            self.session_id,
            describe_status(status),
            delay,
        )
        if self._paused is not None:
            self._paused.cancel()
        self._paused = asyncio.get_running_loop().call_later(delay, self._unpause)

    def _unpause(self) -> None:
        self._paused = None
        self._mark_ready()

    def _resolve_waiters(self, value: bool | None = None) -> None:
        keep = []
        for target, future in self._ack_waiters:
            if future.done():
                continue
            if value is not None:
                future.set_result(value)
            elif self._acked >= target:
                future.set_result(True)
            else:
                keep.append((target, future))
        self._ack_waiters = keep

    # -- own StreamEvents stream ---------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._new_backoff()
        while not self._closed:
            if self._acked >= self._emitted:
                self._new_events.clear()
                if self._acked >= self._emitted:
                    await self._new_events.wait()
                continue
            call = self._stub.StreamEvents()
            try:
                got_ack = await self._pump(call)
            except grpc.aio.AioRpcError as error:
                if is_lease_lost(error):
                    self._lost()
                    return
                if self._acked >= self._emitted:
                    # Nothing is waiting: reconnect lazily, when the next event needs the stream.
                    _log.debug("idle event stream of session %s ended: %s", self.session_id, describe(error))
                    continue
                _log.warning("event stream of session %s broke: %s", self.session_id, describe(error))
            else:
                if got_ack:
                    backoff.reset()
                if self._acked >= self._emitted:
                    continue  # a clean idle close: no backoff needed
            finally:
                call.cancel()
            delay = backoff.next_delay()
            _log.info("event stream of session %s reconnecting in %.2fs", self.session_id, delay)
            await asyncio.sleep(delay)

    async def _pump(self, call: grpc.aio.StreamStreamCall) -> bool:
        """Run one StreamEvents call; returns True when any ack arrived. Raises AioRpcError."""
        self._next_send = self._acked + 1
        acks_before = self._acked
        reader = asyncio.create_task(self._read_acks(call))
        writer = asyncio.create_task(self._write_events(call))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done and writer.exception() is None:
                # Idle half-close: let the server finish acknowledging, then end. A server
                # that does not end the call in time only costs this stream, not the outbox.
                try:
                    async with asyncio.timeout(self._rpc_timeout_s):
                        await asyncio.shield(reader)
                except TimeoutError:
                    _log.debug("event stream of session %s: no end after the half-close", self.session_id)
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
                _log.debug("event stream of session %s: %r", self.session_id, result)
        return self._acked > acks_before

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            ack = cast(worker_service_pb2.StreamEventsResponse, response)
            self.acknowledged(ack.acked_worker_seq, ack.last_seq)

    async def _write_events(self, call: grpc.aio.StreamStreamCall) -> None:
        header_sent = False
        while True:
            if self._next_send > self._emitted:
                self._new_events.clear()
                if self._next_send > self._emitted:
                    try:
                        async with asyncio.timeout(IDLE_CLOSE_S):
                            await self._new_events.wait()
                    except TimeoutError:
                        if self._acked >= self._emitted and self._next_send > self._emitted:
                            await call.done_writing()
                            return
                continue
            batch, _ = self.take(self._max_batch(), MAX_BATCH_BYTES, at_least_one=True)
            if not batch:
                continue  # acked past what this call sent: take() skipped ahead
            request = worker_service_pb2.StreamEventsRequest(events=batch)
            if not header_sent:
                request.worker_id = self.worker_id
                request.session_id = self.session_id
                request.lease_epoch = self.lease_epoch
                header_sent = True
            await call.write(request)
