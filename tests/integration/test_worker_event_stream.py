"""The worker's side of StreamWorkerEvents (`_event_stream.EventStream`): the outboxes of many
sessions share one stream, so events emitted together leave in one message; a refusal holds
back its session alone; a broken stream resends what was not acknowledged; and a control
plane that does not serve the stream gets one StreamEvents stream a session, as before.
Against the scripted control plane in tests/helpers/fake_control_plane.py; the real control
plane's side is in test_shared_event_stream.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from tests.helpers.fake_control_plane import FakeControlPlane
from tether.execution_worker._backoff import Backoff
from tether.execution_worker._event_stream import EventStream
from tether.execution_worker._events import EventOutbox
from tether.v1 import resources_pb2 as rpb
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc


class Outboxes:
    """Outboxes of sessions s0, s1, ... on one EventStream, as a worker makes them."""

    def __init__(self, stub: wgrpc.WorkerServiceStub) -> None:
        self._stub = stub
        self.stream = EventStream(
            stub=stub,
            worker_id="wkr_mux",
            max_events_per_message=lambda: 100,
            new_backoff=lambda: Backoff(0.02, 0.1),
            rpc_timeout_s=2.0,
        )
        self.lost: list[str] = []
        self.all: list[EventOutbox] = []

    def new(self) -> EventOutbox:
        outbox = EventOutbox(
            stub=self._stub,
            worker_id="wkr_mux",
            session_id=f"s{len(self.all)}",
            lease_epoch=1,
            max_events_per_message=lambda: 100,
            new_backoff=lambda: Backoff(0.02, 0.1),
            on_lease_lost=lambda o: self.lost.append(o.session_id),
            rpc_timeout_s=2.0,
            stream=self.stream,
        )
        outbox.start()
        self.all.append(outbox)
        return outbox

    async def close(self) -> None:
        for outbox in self.all:
            await outbox.close()
        await self.stream.close()


@contextlib.asynccontextmanager
async def _outboxes(target: str) -> AsyncIterator[Outboxes]:
    async with grpc.aio.insecure_channel(target) as channel:
        boxes = Outboxes(wgrpc.WorkerServiceStub(channel))
        try:
            yield boxes
        finally:
            await boxes.close()


def _text(text: str) -> rpb.EventBody:
    return rpb.EventBody(output=rpb.OutputChunk(text=text))


def _messages(cp: FakeControlPlane) -> list[wpb.StreamWorkerEventsRequest]:
    return [entry[1] for entry in cp.log if entry[0] == "worker_events"]


def _stored(cp: FakeControlPlane, session_id: str) -> list[tuple[int, str]]:
    return [(e.worker_seq, e.body.output.text) for sid, e in cp.stored if sid == session_id]


async def _all_acked(boxes: Outboxes) -> None:
    assert all(await asyncio.gather(*(o.wait_acked(5) for o in boxes.all))), "not every event was acknowledged"


async def test_events_emitted_together_by_many_sessions_leave_in_one_message(fake_cp):
    cp, target = fake_cp
    cp.serves_worker_events = True
    async with _outboxes(target) as boxes:
        outboxes = [boxes.new() for _ in range(3)]
        for i, outbox in enumerate(outboxes):  # in one step of the loop, as turns of one worker can
            outbox.emit("trn_1", _text(f"{i}a"))
            outbox.emit("trn_1", _text(f"{i}b"))
        await _all_acked(boxes)
        (message,) = _messages(cp)
        assert message.worker_id == "wkr_mux"
        assert [(b.session_id, b.lease_epoch, [e.worker_seq for e in b.events]) for b in message.batches] == [
            ("s0", 1, [1, 2]),
            ("s1", 1, [1, 2]),
            ("s2", 1, [1, 2]),
        ]
        # The next event goes at once, alone, on the same stream.
        outboxes[1].emit("trn_1", _text("1c"))
        await _all_acked(boxes)
        assert [[b.session_id for b in m.batches] for m in _messages(cp)] == [["s0", "s1", "s2"], ["s1"]]
        assert not _messages(cp)[1].worker_id  # the header went in the first message only
        assert _stored(cp, "s1") == [(1, "1a"), (2, "1b"), (3, "1c")]


async def test_one_message_holds_at_most_the_event_limit_and_sessions_take_turns(fake_cp):
    cp, target = fake_cp
    cp.serves_worker_events = True
    async with _outboxes(target) as boxes:
        boxes.stream._max_events = lambda: 3
        a, b = boxes.new(), boxes.new()
        for n in range(5):
            a.emit("trn_1", _text(f"a{n}"))
        b.emit("trn_1", _text("b0"))
        await _all_acked(boxes)
        shapes = [[(x.session_id, len(x.events)) for x in m.batches] for m in _messages(cp)]
        assert shapes == [[("s0", 3)], [("s1", 1), ("s0", 2)]]
        assert [t for _, t in _stored(cp, "s0")] == [f"a{n}" for n in range(5)]


async def test_a_refused_batch_is_resent_after_a_pause_while_other_sessions_go_on(fake_cp):
    cp, target = fake_cp
    cp.serves_worker_events = True
    cp.refuse_next["s1"] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED")
    async with _outboxes(target) as boxes:
        a, b = boxes.new(), boxes.new()
        a.emit("trn_1", _text("a"))
        b.emit("trn_1", _text("b"))
        assert await a.wait_acked(5)
        await _all_acked(boxes)
        assert _stored(cp, "s0") == [(1, "a")]
        assert _stored(cp, "s1") == [(1, "b")]  # refused once, then resent and stored once
        sent = [(x.session_id, [e.worker_seq for e in x.events]) for m in _messages(cp) for x in m.batches]
        assert sent.count(("s1", [1])) == 2
        assert boxes.lost == [] and not b.lease_lost


async def test_a_lost_lease_stops_that_session_alone(fake_cp):
    cp, target = fake_cp
    cp.serves_worker_events = True
    cp.refuse_next["s0"] = (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    async with _outboxes(target) as boxes:
        a, b = boxes.new(), boxes.new()
        a.emit("trn_1", _text("a"))
        b.emit("trn_1", _text("b"))
        assert not await a.wait_acked(5)  # closed, not acknowledged
        assert await b.wait_acked(5)
        assert boxes.lost == ["s0"] and a.lease_lost
        assert a.emit("trn_1", _text("after")) == 0  # nothing more is taken for it
        b.emit("trn_1", _text("b2"))
        assert await b.wait_acked(5)
        assert _stored(cp, "s0") == []
        assert _stored(cp, "s1") == [(1, "b"), (2, "b2")]


async def test_a_broken_stream_resends_what_was_not_acknowledged(fake_cp):
    cp, target = fake_cp
    cp.serves_worker_events = True
    cp.break_worker_events = 2
    async with _outboxes(target) as boxes:
        a, b = boxes.new(), boxes.new()
        a.emit("trn_1", _text("a"))
        b.emit("trn_1", _text("b"))
        await _all_acked(boxes)
        assert _stored(cp, "s0") == [(1, "a")]
        assert _stored(cp, "s1") == [(1, "b")]
        assert len(_messages(cp)) == 3  # two broken calls, then the one that stored them


async def test_a_control_plane_without_the_shared_stream_gets_a_stream_a_session(fake_cp):
    cp, target = fake_cp  # serves_worker_events is off: UNIMPLEMENTED, as a control plane that predates it
    async with _outboxes(target) as boxes:
        a, b = boxes.new(), boxes.new()
        a.emit("trn_1", _text("a"))
        b.emit("trn_1", _text("b"))
        await _all_acked(boxes)
        assert not boxes.stream.served
        later = boxes.new()  # made after the fall-back: straight to a stream of its own
        later.emit("trn_1", _text("c"))
        await _all_acked(boxes)
        per_session = [entry[1].session_id for entry in cp.log if entry[0] == "events" and entry[1].session_id]
        assert sorted(per_session) == ["s0", "s1", "s2"]
        assert _stored(cp, "s0") == [(1, "a")] and _stored(cp, "s2") == [(1, "c")]
        assert _messages(cp) == []  # the refused call was answered before it read a message
