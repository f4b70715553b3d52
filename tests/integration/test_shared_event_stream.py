"""StreamWorkerEvents, the control plane's side: one stream carries batches of many sessions,
each fenced, deduplicated and acknowledged as on StreamEvents; a refused batch is answered for
its session alone and the stream goes on; what is wrong with the message itself ends it.
Driven by a scripted worker over the raw contract."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2

from tests.helpers.fake_worker import FakeWorker, completed, output, started
from tests.helpers.processes import FAST, eventually
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.v1 import worker_service_pb2 as wpb

HELD_S = 30.0
NO_ANSWER_S = 0.3  # how long a test watches for an answer that must not come


@contextlib.asynccontextmanager
async def _control_plane(db_url: str, ack_delay_s: float) -> AsyncIterator[ControlPlane]:
    timings = dataclasses.replace(FAST, event_ack_delay_s=ack_delay_s)
    async with ControlPlane(Settings(port=0, db=db_url, timings=timings, dev_owner="local", migrate=True)) as cp:
        yield cp


@dataclasses.dataclass
class Running:
    session_id: str
    turn_id: str
    epoch: int


class Shared:
    """One StreamWorkerEvents call written message by message, its answers read as they come."""

    def __init__(self, worker: FakeWorker) -> None:
        self._worker_id = worker.worker_id
        self._call = worker.stub.StreamWorkerEvents(timeout=HELD_S)
        self.answers: list[wpb.StreamWorkerEventsResponse] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (answer := await self._call.read()) is not grpc.aio.EOF:
            self.answers.append(answer)

    async def write(self, *batches: tuple[Running, list[wpb.WorkerEvent]]) -> None:
        request = wpb.StreamWorkerEventsRequest(worker_id=self._worker_id)
        self._worker_id = ""  # the id goes in the first message only
        for run, events in batches:
            request.batches.add(session_id=run.session_id, lease_epoch=run.epoch, events=events)
        await self._call.write(request)

    async def write_raw(self, request: wpb.StreamWorkerEventsRequest) -> None:
        await self._call.write(request)

    async def end(self) -> None:
        await self._call.done_writing()
        await asyncio.wait_for(self._reader, 10)

    async def status(self) -> grpc.aio.AioRpcError:
        """The error the call ended with."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(self._reader, 10)
        return info.value

    def acks(self, run: Running) -> list[int]:
        return [a.acked_worker_seq for m in self.answers for a in m.acks if a.session_id == run.session_id]

    def refusals(self, run: Running) -> list[wpb.SessionEventsRefused]:
        return [r for m in self.answers for r in m.refused if r.session_id == run.session_id]

    def cancel(self) -> None:
        self._call.cancel()


def _reason(refusal: wpb.SessionEventsRefused) -> str:
    for detail in refusal.status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


@contextlib.asynccontextmanager
async def _sessions(
    cp: ControlPlane, worker_id: str, n: int
) -> AsyncIterator[tuple[sdk.AsyncClient, FakeWorker, list[Running]]]:
    """A client, and a scripted worker holding `n` new shell sessions with a turn running in each."""
    target = f"127.0.0.1:{cp.port}"
    async with sdk.AsyncClient(target) as client:
        worker = FakeWorker(target, worker_id, slots=n)
        await worker.register()
        await worker.open_lease()
        try:
            runs = []
            for _ in range(n):
                s = await client.create_session("shell")
                sent = await client.send_input(s.session_id, "echo hi")
                offer = await worker.take_offer()
                assert offer.turn_id == sent.turn_id
                runs.append(Running(s.session_id, sent.turn_id, offer.lease_epoch))
            yield client, worker, runs
        finally:
            await worker.close()


async def _events(client: sdk.AsyncClient, session_id: str) -> list[tuple[str, str]]:
    return [(e.kind, e.text) async for e in client.stream_events(session_id, stop_at_end=True)]


async def _kinds(client: sdk.AsyncClient, session_id: str) -> list[str]:
    return [kind for kind, _ in await _events(client, session_id)]


async def test_one_message_carries_many_sessions_and_one_answer_acknowledges_them(db_url):
    async with _control_plane(db_url, HELD_S) as cp, _sessions(cp, "wkr_mux", 3) as (client, worker, runs):
        a, b, c = runs
        call = Shared(worker)
        await call.write(
            (a, [started(1, a.turn_id, "wkr_mux"), output(2, a.turn_id, "a")]),
            (b, [started(1, b.turn_id, "wkr_mux")]),
            (c, [started(1, c.turn_id, "wkr_mux"), output(2, c.turn_id, "c")]),
        )
        await call.write((b, [output(2, b.turn_id, "b")]))
        for run in runs:
            await eventually(
                lambda run=run: _stored_to(client, run, 3), timeout=10, what=f"{run.session_id}'s events to be stored"
            )
        await asyncio.sleep(NO_ANSWER_S)
        assert call.answers == []  # held: none of them ends a turn
        await call.write((a, [completed(3, a.turn_id)]))
        await eventually(lambda: bool(call.answers), timeout=10, what="the turn's end to be acknowledged")
        # The turn's end went out at once, with every other session's durable batches.
        assert len(call.answers) == 1
        assert {(x.session_id, x.lease_epoch, x.acked_worker_seq) for x in call.answers[0].acks} == {
            (a.session_id, a.epoch, 3),
            (b.session_id, b.epoch, 2),
            (c.session_id, c.epoch, 2),
        }
        assert {x.session_id: x.last_seq for x in call.answers[0].acks}[a.session_id] == 4
        await call.end()
        assert await _kinds(client, a.session_id) == ["input_received", "turn_started", "output", "turn_completed"]
        assert await _kinds(client, b.session_id) == ["input_received", "turn_started", "output"]
        assert (await client.get_turn(a.session_id, a.turn_id)).state == sdk.TurnState.COMPLETED


async def _stored_to(client: sdk.AsyncClient, run: Running, seq: int) -> bool:
    return (await client.get_session(run.session_id)).last_seq >= seq


async def test_a_lost_lease_refuses_that_session_alone_and_the_stream_goes_on(db_url):
    async with _control_plane(db_url, 0.0) as cp, _sessions(cp, "wkr_fence", 2) as (client, worker, runs):
        a, b = runs
        before = await _kinds(client, a.session_id)
        stale = Running(a.session_id, a.turn_id, a.epoch + 1)
        call = Shared(worker)
        await call.write((stale, [output(1, a.turn_id, "forged")]), (b, [started(1, b.turn_id, "wkr_fence")]))
        await eventually(lambda: call.acks(b) and call.refusals(stale), timeout=10, what="an ack and a refusal")
        (refusal,) = call.refusals(stale)
        assert refusal.lease_epoch == stale.epoch
        assert refusal.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert _reason(refusal) == "LEASE_LOST"
        assert call.acks(b) == [1]
        assert await _kinds(client, a.session_id) == before  # nothing stored, nothing shown
        # The same stream goes on, for both sessions at their real epochs.
        await call.write(
            (a, [started(1, a.turn_id, "wkr_fence"), completed(2, a.turn_id)]), (b, [completed(2, b.turn_id)])
        )
        await eventually(lambda: call.acks(a) == [2] and call.acks(b)[-1] == 2, timeout=10, what="both turns' ends")
        await call.end()
        for run in runs:
            assert (await client.get_turn(run.session_id, run.turn_id)).state == sdk.TurnState.COMPLETED


async def test_batches_sent_before_a_refusal_was_read_are_dropped_until_the_worker_resends(db_url):
    async with _control_plane(db_url, 0.0) as cp, _sessions(cp, "wkr_gap", 2) as (client, worker, runs):
        a, b = runs
        call = Shared(worker)
        await call.write((a, [started(1, a.turn_id, "wkr_gap")]))
        await eventually(lambda: call.acks(a) == [1], timeout=10, what="the first batch's ack")
        # A batch with a gap is refused; the two the worker wrote after it, before reading the
        # refusal, do not continue what was accepted either: dropped, with no refusal of
        # their own, while the other session's batch between them is stored.
        await call.write((a, [output(3, a.turn_id, "gap")]))
        await call.write((a, [output(4, a.turn_id, "in flight")]), (b, [started(1, b.turn_id, "wkr_gap")]))
        await call.write((a, [output(5, a.turn_id, "in flight")]))
        await eventually(lambda: call.acks(b) == [1], timeout=10, what="the other session's ack")
        await asyncio.sleep(NO_ANSWER_S)
        (refusal,) = call.refusals(a)
        assert refusal.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "must continue at 2" in refusal.status.message
        # The resend from the acknowledged watermark is stored, once.
        await call.write((a, [output(2, a.turn_id, "x"), output(3, a.turn_id, "y"), completed(4, a.turn_id)]))
        await eventually(lambda: call.acks(a)[-1] == 4, timeout=10, what="the resend's ack")
        await call.end()
        assert len(call.refusals(a)) == 1
        assert (await _events(client, a.session_id))[1:] == [
            ("turn_started", ""),
            ("output", "x"),
            ("output", "y"),
            ("turn_completed", ""),
        ]


async def test_a_resend_on_a_new_stream_is_acknowledged_and_stored_once(db_url):
    async with _control_plane(db_url, HELD_S) as cp, _sessions(cp, "wkr_again", 2) as (client, worker, runs):
        a, b = runs
        batch_a = [started(1, a.turn_id, "wkr_again"), output(2, a.turn_id, "a")]
        first = Shared(worker)
        await first.write((a, batch_a), (b, [started(1, b.turn_id, "wkr_again")]))
        await eventually(lambda: _stored_to(client, a, 3), timeout=10, what="the batch to be stored")
        first.cancel()  # the stream breaks before the held ack
        second = Shared(worker)
        await second.write((a, batch_a), (b, [started(1, b.turn_id, "wkr_again"), output(2, b.turn_id, "b")]))
        # a's resend holds nothing new: acknowledged at once (b's new event rides along once durable).
        await eventually(lambda: second.acks(a) == [2], timeout=10, what="the resend's ack")
        await second.end()
        assert second.acks(b)[-1] == 2
        assert await _kinds(client, a.session_id) == ["input_received", "turn_started", "output"]
        assert await _kinds(client, b.session_id) == ["input_received", "turn_started", "output"]


@pytest.mark.parametrize(
    "case", ["a second worker id", "too many events", "a batch without a session", "a batch without an epoch"]
)
async def test_a_malformed_message_ends_the_stream_and_stores_nothing_of_it(db_url, case):
    async with _control_plane(db_url, 0.0) as cp, _sessions(cp, "wkr_bad", 1) as (client, worker, runs):
        (a,) = runs
        call = Shared(worker)
        await call.write((a, [started(1, a.turn_id, "wkr_bad")]))
        await eventually(lambda: call.acks(a) == [1], timeout=10, what="the first batch's ack")
        before = await _kinds(client, a.session_id)
        bad = wpb.StreamWorkerEventsRequest()
        batch = bad.batches.add(session_id=a.session_id, lease_epoch=a.epoch, events=[output(2, a.turn_id, "x")])
        if case == "a second worker id":
            bad.worker_id = "wkr_other"
        elif case == "too many events":
            del batch.events[:]
            batch.events.extend(output(2 + i, a.turn_id, "x") for i in range(FAST.max_events_per_message + 1))
        elif case == "a batch without a session":
            bad.batches.add(lease_epoch=a.epoch, events=[output(3, a.turn_id, "y")])
        else:
            bad.batches.add(session_id=a.session_id, events=[output(3, a.turn_id, "y")])
        await call.write_raw(bad)
        error = await call.status()
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        said = {
            "a second worker id": "one StreamWorkerEvents stream carries one worker",
            "too many events": f"at most {FAST.max_events_per_message} events per message",
            "a batch without a session": "batches[1].session_id",
            "a batch without an epoch": "batches[1].lease_epoch",
        }[case]
        assert said in (error.details() or ""), error.details()
        assert await _kinds(client, a.session_id) == before  # nothing of the message is stored


async def test_a_stream_remembers_a_bounded_number_of_refused_sessions(db_url, monkeypatch):
    """A shared stream may live for days over any number of sessions, so what it remembers of
    them is bounded; a refused session it forgot gets its in-flight batch refused again, which
    the worker handles as it does the first refusal (a pause, then the resend)."""
    monkeypatch.setattr("tether.control_plane.api._event_streams._REMEMBERED", 1)
    async with _control_plane(db_url, 0.0) as cp, _sessions(cp, "wkr_bound", 2) as (client, worker, runs):
        a, b = runs
        call = Shared(worker)
        await call.write((a, [output(2, a.turn_id, "gap")]), (b, [output(2, b.turn_id, "gap")]))
        await eventually(lambda: call.refusals(a) and call.refusals(b), timeout=10, what="both refusals")
        # b is remembered: its in-flight batch is dropped; a was forgotten: refused again.
        await call.write((b, [output(3, b.turn_id, "in flight")]), (a, [output(3, a.turn_id, "in flight")]))
        await eventually(lambda: len(call.refusals(a)) == 2, timeout=10, what="a's second refusal")
        await asyncio.sleep(NO_ANSWER_S)
        assert len(call.refusals(b)) == 1
        # Both resend from the watermark and are stored once.
        await call.write(
            (a, [started(1, a.turn_id, "wkr_bound"), completed(2, a.turn_id)]),
            (b, [started(1, b.turn_id, "wkr_bound"), completed(2, b.turn_id)]),
        )
        await eventually(lambda: call.acks(a) == [2] and call.acks(b) == [2], timeout=10, what="the resends' acks")
        await call.end()
        for run in runs:
            assert await _kinds(client, run.session_id) == ["input_received", "turn_started", "turn_completed"]


async def test_the_sessions_a_message_names_are_loaded_at_once_and_a_failed_load_refuses_its_own(db_url, monkeypatch):
    """After a control-plane restart a worker's first message names every session it resends,
    none of them in memory: their loads (each a read) run at the same time, not one behind
    another, and one that fails (here a stale epoch) refuses that batch alone."""
    async with _control_plane(db_url, 0.0) as cp, _sessions(cp, "wkr_cold", 4) as (client, worker, runs):
        assert cp.hub is not None
        real = cp.hub.load_for_worker
        in_flight = peak = 0

        async def slow(*args: object) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(0.2)  # a read that takes a while
                await real(*args)  # type: ignore[arg-type]
            finally:
                in_flight -= 1

        monkeypatch.setattr(cp.hub, "load_for_worker", slow)
        stale = dataclasses.replace(runs[0], epoch=runs[0].epoch + 1)
        call = Shared(worker)
        await call.write(*((r, [started(1, r.turn_id, "wkr_cold")]) for r in [*runs, stale]))
        await eventually(lambda: all(call.acks(r) == [1] for r in runs), timeout=10, what="every session's ack")
        await eventually(lambda: bool(call.refusals(stale)), timeout=10, what="the stale epoch's refusal")
        assert peak == 5  # all five (session, epoch) pairs at once
        [refusal] = call.refusals(stale)
        assert refusal.lease_epoch == stale.epoch and _reason(refusal) == "LEASE_LOST"
        # Loaded once: the next batches go straight to ingest.
        await call.write(*((r, [completed(2, r.turn_id)]) for r in runs))
        await eventually(lambda: all(call.acks(r) == [1, 2] for r in runs), timeout=10, what="the turns' ends")
        assert peak == 5 and in_flight == 0
        await call.end()
        for run in runs:
            assert await _kinds(client, run.session_id) == ["input_received", "turn_started", "turn_completed"]
