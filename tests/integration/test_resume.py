"""Resume and RestoreSession at the contract level, with scripted workers (exact control of
what a worker sends) against an in-process control plane."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.helpers.fake_worker import FakeWorker, completed, output, started
from tether import sdk
from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb

ITEMS = 10_000


def _snapshot_chunks(worker_id: str, session_id: str, epoch: int, seq: int, n: int, per_chunk: int = 500):
    items = [pb.HistoryItem(role=pb.HISTORY_ITEM_ROLE_OUTPUT, text=f"item {i}\n") for i in range(n)]
    first = wpb.SnapshotRequest(
        worker_id=worker_id,
        session_id=session_id,
        lease_epoch=epoch,
        seq=seq,
        runtime_metadata_json='{"runtime": "fake"}',
        history=items[:per_chunk],
    )
    yield first
    for i in range(per_chunk, n, per_chunk):
        yield wpb.SnapshotRequest(history=items[i : i + per_chunk])


async def test_resume_streams_a_10k_item_history_in_chunks_then_the_tail(control_plane, client):
    target = f"127.0.0.1:{control_plane.port}"
    a = FakeWorker(target, "wkr_a")
    await a.register()
    await a.open_lease()
    s = await client.create_session("shell")
    t1 = await client.send_input(s.session_id, "first")
    offer = await a.take_offer()
    await a.write(s.session_id, offer.lease_epoch, [started(1, t1.turn_id, "wkr_a"), completed(2, t1.turn_id)])
    last = (await client.get_session(s.session_id)).last_seq
    stored = await a.stub.Snapshot(_snapshot_chunks("wkr_a", s.session_id, offer.lease_epoch, last, ITEMS), timeout=10)
    assert stored.seq == last  # acknowledged with the watermark it covers
    await a.close()  # A dies: its session moves on the worker-dead clock

    b = FakeWorker(target, "wkr_b")
    await b.register()
    await b.open_lease()
    try:
        t2 = await client.send_input(s.session_id, "second")
        moved = await b.take_offer()
        assert moved.resume_required and moved.lease_epoch == offer.lease_epoch + 1
        chunks = [
            c
            async for c in b.stub.Resume(
                wpb.ResumeRequest(worker_id="wkr_b", session_id=s.session_id, lease_epoch=moved.lease_epoch), timeout=10
            )
        ]
        history = [h.text for c in chunks for h in c.history]
        assert history == [f"item {i}\n" for i in range(ITEMS)]
        assert chunks[0].snapshot_seq == last and chunks[0].runtime_metadata_json == '{"runtime": "fake"}'
        assert len(chunks) > ITEMS // 500 and all(len(c.history) <= 500 for c in chunks)
        tail = [e for c in chunks for e in c.events]
        # After the snapshot's watermark comes only what was logged since: turn 2's input.
        assert [(e.seq, e.body.WhichOneof("kind")) for e in tail] == [(last + 1, "input_received")]
        assert tail[0].turn_id == t2.turn_id
        # The old holder's snapshot is refused now.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await b.stub.Snapshot(_snapshot_chunks("wkr_a", s.session_id, offer.lease_epoch, last, 1), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "LEASE_LOST" in str(
            err.value.trailing_metadata()
        )
    finally:
        await b.close()


async def test_restore_fails_closed_when_the_target_cannot_rehydrate(control_plane, client):
    target = f"127.0.0.1:{control_plane.port}"
    a = FakeWorker(target, "wkr_a")
    b = FakeWorker(target, "wkr_b")
    await a.register()
    await a.open_lease()
    a_leases: dict[str, int] = {}
    a.start_heartbeat(a_leases)
    try:
        s = await client.create_session("shell")
        t1 = await client.send_input(s.session_id, "first")
        offer = (await a.next("offer")).offer
        a.send(
            wpb.LeaseRequest(
                accept=wpb.AcceptOffer(session_id=s.session_id, turn_id=offer.turn_id, lease_epoch=offer.lease_epoch)
            )
        )
        await a.next("granted")
        a_leases[s.session_id] = offer.lease_epoch
        await a.write(s.session_id, offer.lease_epoch, [started(1, t1.turn_id, "wkr_a"), completed(2, t1.turn_id)])
        await b.register()  # only now, so the first turn could only go to A
        await b.open_lease()
        restore = asyncio.create_task(client.restore_session(s.session_id, worker_id="wkr_b"))
        placement = (await b.next("offer")).offer
        assert placement.restore_only and placement.turn_id == "" and placement.resume_required
        assert placement.lease_epoch == offer.lease_epoch + 1
        b.send(wpb.LeaseRequest(accept=wpb.AcceptOffer(session_id=s.session_id, lease_epoch=placement.lease_epoch)))
        granted = (await b.next("granted")).granted
        assert granted.turn_id == "" and granted.lease_epoch == placement.lease_epoch
        revoked = (await a.next("revoked")).revoked  # A lost the session at once
        assert revoked.lease_epoch == offer.lease_epoch
        b.send(
            wpb.LeaseRequest(
                release=wpb.ReleaseLease(
                    session_id=s.session_id, lease_epoch=placement.lease_epoch, reason="rehydration failed: boom"
                )
            )
        )
        with pytest.raises(sdk.TetherError) as err:
            await restore
        assert err.value.reason == "REHYDRATION_FAILED" and "boom" in str(err.value)
        session = await client.get_session(s.session_id)
        assert session.worker_id == "" and session.lease_epoch == placement.lease_epoch
        # Nothing was lost: the log is as it was, and A's late writes are refused.
        kinds = [e.kind async for e in client.stream_events(s.session_id, stop_at_end=True)]
        assert kinds == ["input_received", "turn_started", "turn_completed"]
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await a.write(s.session_id, offer.lease_epoch, [started(3, t1.turn_id, "wkr_a")])
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await a.close()
        await b.close()


async def test_resume_sends_the_input_of_a_turn_queued_before_the_snapshot_watermark(control_plane, client):
    """A snapshot's watermark can cover the input of a turn queued while the previous one ran;
    its history cannot hold that input, so Resume must send it with the tail."""
    target = f"127.0.0.1:{control_plane.port}"
    a = FakeWorker(target, "wkr_a")
    await a.register()
    await a.open_lease()
    leases: dict[str, int] = {}
    a.start_heartbeat(leases)
    s = await client.create_session("shell")
    t1 = await client.send_input(s.session_id, "first")
    offer = await a.take_offer()
    leases[s.session_id] = offer.lease_epoch
    await a.write(s.session_id, offer.lease_epoch, [started(1, t1.turn_id, "wkr_a"), output(2, t1.turn_id, "one\n")])
    t2 = await client.send_input(s.session_id, "second")  # queued while turn 1 runs
    await a.write(s.session_id, offer.lease_epoch, [completed(3, t1.turn_id)])
    last = (await client.get_session(s.session_id)).last_seq
    history = [
        pb.HistoryItem(role=pb.HISTORY_ITEM_ROLE_INPUT, text="first"),
        pb.HistoryItem(role=pb.HISTORY_ITEM_ROLE_OUTPUT, text="one\n"),
    ]
    await a.stub.Snapshot(
        iter(
            [
                wpb.SnapshotRequest(
                    worker_id="wkr_a",
                    session_id=s.session_id,
                    lease_epoch=offer.lease_epoch,
                    seq=last,
                    history=history,
                )
            ]
        ),
        timeout=10,
    )
    second = await a.take_offer()
    assert second.turn_id == t2.turn_id and not second.resume_required
    await a.write(s.session_id, offer.lease_epoch, [started(4, t2.turn_id, "wkr_a"), output(5, t2.turn_id, "tw")])
    await a.close()  # dies mid-turn 2

    b = FakeWorker(target, "wkr_b")
    await b.register()
    await b.open_lease()
    try:
        await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=10)
        t3 = await client.send_input(s.session_id, "third")
        moved = await b.take_offer()
        assert moved.turn_id == t3.turn_id and moved.resume_required
        chunks = [
            c
            async for c in b.stub.Resume(
                wpb.ResumeRequest(worker_id="wkr_b", session_id=s.session_id, lease_epoch=moved.lease_epoch), timeout=10
            )
        ]
        assert [h.text for c in chunks for h in c.history] == ["first", "one\n"]
        tail = [(e.turn_id, e.body.WhichOneof("kind")) for c in chunks for e in c.events]
        assert tail[0] == (t2.turn_id, "input_received")  # at or before the watermark, but needed
        assert tail[1:] == [
            (t2.turn_id, "turn_started"),
            (t2.turn_id, "output"),
            (t2.turn_id, "turn_failed"),
            (t3.turn_id, "input_received"),
        ]
    finally:
        await b.close()
