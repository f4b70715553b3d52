"""StreamEvents acknowledgements: one ack covers a run of batches, and never delays what a worker
waits for (a turn's end, a resend, the end of the stream).

The control plane here holds an ack for up to 30 s, far beyond any step of these tests, so an
ack that arrives while they run was sent at once, not when its delay ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.helpers.fake_worker import FakeWorker, completed, output, started
from tests.helpers.processes import FAST, eventually
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.v1 import worker_service_pb2 as wpb

HELD_S = 30.0
NO_ACK_S = 0.3  # how long a test watches for an ack that must not come


@pytest.fixture
async def holding_cp(db_url: str) -> AsyncIterator[ControlPlane]:
    timings = dataclasses.replace(FAST, event_ack_delay_s=HELD_S)
    async with ControlPlane(Settings(port=0, db=db_url, timings=timings, dev_owner="local", migrate=True)) as cp:
        yield cp


class EventCall:
    """One StreamEvents call written batch by batch, its acks read as they come."""

    def __init__(self, worker: FakeWorker, session_id: str, epoch: int) -> None:
        self._header = wpb.StreamEventsRequest(worker_id=worker.worker_id, session_id=session_id, lease_epoch=epoch)
        self._call = worker.stub.StreamEvents(timeout=HELD_S)
        self.acks: list[wpb.StreamEventsResponse] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (ack := await self._call.read()) is not grpc.aio.EOF:
            self.acks.append(ack)

    async def write(self, *events: wpb.WorkerEvent) -> None:
        request = wpb.StreamEventsRequest()
        request.CopyFrom(self._header)
        self._header = wpb.StreamEventsRequest()  # the header goes in the first message only
        request.events.extend(events)
        await self._call.write(request)

    async def end(self) -> None:
        await self._call.done_writing()
        await asyncio.wait_for(self._reader, 10)

    def cancel(self) -> None:
        self._call.cancel()
        self._reader.cancel()


@contextlib.asynccontextmanager
async def _running_turn(cp: ControlPlane, worker_id: str) -> AsyncIterator[tuple[sdk.AsyncClient, Turn]]:
    """A client and a scripted worker holding the lease of a new shell session with a turn
    running; every EventCall opened through the yielded Turn is cancelled at the end."""
    target = f"127.0.0.1:{cp.port}"
    async with sdk.AsyncClient(target) as client:
        worker = FakeWorker(target, worker_id)
        await worker.register()
        await worker.open_lease()
        turn: Turn | None = None
        try:
            s = await client.create_session("shell")
            sent = await client.send_input(s.session_id, "echo hi")
            offer = await worker.take_offer()
            turn = Turn(worker, s.session_id, sent.turn_id, offer.lease_epoch)
            yield client, turn
        finally:
            if turn is not None:
                for call in turn.calls:
                    call.cancel()
            await worker.close()


class Turn:
    """The running turn, and the StreamEvents calls opened for it."""

    def __init__(self, worker: FakeWorker, session_id: str, turn_id: str, epoch: int) -> None:
        self.worker, self.session_id, self.turn_id, self.epoch = worker, session_id, turn_id, epoch
        self.calls: list[EventCall] = []

    def call(self) -> EventCall:
        call = EventCall(self.worker, self.session_id, self.epoch)
        self.calls.append(call)
        return call


async def _stored(client: sdk.AsyncClient, session_id: str) -> int:
    return (await client.get_session(session_id)).last_seq


async def test_batches_share_one_ack_and_a_turns_end_is_acknowledged_at_once(holding_cp, db_url):
    async with _running_turn(holding_cp, "wkr_acks") as (client, turn):
        sid, tid = turn.session_id, turn.turn_id
        call = turn.call()
        await call.write(started(1, tid, "wkr_acks"))
        await call.write(output(2, tid, "a"))
        await call.write(output(3, tid, "b"))
        # input_received plus the three: stored, shown to subscribers, not acknowledged yet.
        await eventually(lambda: _has_seq(client, sid, 4), timeout=10, what="the three batches to be stored")
        await asyncio.sleep(NO_ACK_S)
        assert call.acks == []
        await call.write(completed(4, tid))
        await eventually(lambda: bool(call.acks), timeout=10, what="the turn's end to be acknowledged")
        # One ack covers all four batches.
        assert [(a.acked_worker_seq, a.last_seq) for a in call.acks] == [(4, 5)]
        assert (await client.get_turn(sid, tid)).state == sdk.TurnState.COMPLETED
        await call.end()
        assert len(call.acks) == 1


async def test_a_held_ack_goes_out_when_the_worker_closes_the_stream(holding_cp, db_url):
    async with _running_turn(holding_cp, "wkr_close") as (client, turn):
        call = turn.call()
        await call.write(started(1, turn.turn_id, "wkr_close"), output(2, turn.turn_id, "a"))
        await eventually(lambda: _has_seq(client, turn.session_id, 3), timeout=10, what="the batch to be stored")
        await asyncio.sleep(NO_ACK_S)
        assert call.acks == []
        await call.end()
        assert [(a.acked_worker_seq, a.last_seq) for a in call.acks] == [(2, 3)]


async def test_a_resend_is_acknowledged_at_once(holding_cp, db_url):
    """A worker that lost its stream before the ack resends; the events are stored already, so
    the resend is acknowledged without waiting (and nothing is stored twice)."""
    async with _running_turn(holding_cp, "wkr_resend") as (client, turn):
        sid, tid = turn.session_id, turn.turn_id
        batch = (started(1, tid, "wkr_resend"), output(2, tid, "a"))
        first = turn.call()
        await first.write(*batch)
        await eventually(lambda: _has_seq(client, sid, 3), timeout=10, what="the batch to be stored")
        first.cancel()  # the stream breaks before its ack
        assert first.acks == []
        again = turn.call()
        await again.write(*batch)
        await eventually(lambda: bool(again.acks), timeout=10, what="the resend to be acknowledged")
        assert [(a.acked_worker_seq, a.last_seq) for a in again.acks] == [(2, 3)]
        kinds = [e.kind async for e in _events(client, sid)]
        assert kinds == ["input_received", "turn_started", "output"]


async def _has_seq(client: sdk.AsyncClient, session_id: str, seq: int) -> bool:
    return await _stored(client, session_id) >= seq


async def _events(client: sdk.AsyncClient, session_id: str) -> AsyncIterator[sdk.Event]:
    async for e in client.stream_events(session_id):
        yield e
        if e.seq >= await _stored(client, session_id):
            return
