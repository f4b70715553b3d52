"""Lease fencing and exactly-once ingest, driven by a scripted worker over the raw contract."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.helpers.fake_worker import FakeWorker, completed, output, started
from tests.helpers.processes import eventually
from tether import sdk
from tether.sdk._errors import translate_rpc_error


async def _expect_error(coro, code: grpc.StatusCode, reason: str) -> sdk.TetherError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    err = translate_rpc_error(info.value)
    assert info.value.code() == code, info.value
    assert err.reason == reason, err
    return err


async def _texts(client: sdk.AsyncClient, session_id: str) -> list[tuple[int, str, str]]:
    return [(e.seq, e.kind, e.text) async for e in client.stream_events(session_id, stop_at_end=True)]


async def test_stale_epoch_write_is_refused_and_nothing_is_stored(control_plane, client):
    target = f"127.0.0.1:{control_plane.port}"
    a = FakeWorker(target, "wkr_a")
    await a.register()
    await a.open_lease()
    try:
        s = await client.create_session("shell")
        turn = await client.send_input(s.session_id, "echo one")
        offer = await a.take_offer()
        assert offer.lease_epoch == 1 and offer.turn_id == turn.turn_id
        before = await _texts(client, s.session_id)

        err = await _expect_error(
            a.write(s.session_id, offer.lease_epoch + 1, [output(1, turn.turn_id, "forged")]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_LOST",
        )
        assert isinstance(err, sdk.LeaseLostError)
        assert await _texts(client, s.session_id) == before  # nothing stored, nothing shown

        acks = await a.write(
            s.session_id,
            offer.lease_epoch,
            [started(1, turn.turn_id, "wkr_a"), output(2, turn.turn_id, "one\n"), completed(3, turn.turn_id)],
        )
        assert acks[-1].acked_worker_seq == 3
        done = await client.get_turn(s.session_id, turn.turn_id)
        assert done.state == sdk.TurnState.COMPLETED
        assert [k for _, k, _ in await _texts(client, s.session_id)] == [
            "input_received",
            "turn_started",
            "output",
            "turn_completed",
        ]
    finally:
        await a.close()


async def test_moved_session_refuses_every_write_of_the_old_holder(control_plane, client):
    target = f"127.0.0.1:{control_plane.port}"
    a = FakeWorker(target, "wkr_old")
    await a.register()
    await a.open_lease()
    s = await client.create_session("shell")
    t1 = await client.send_input(s.session_id, "echo first")
    offer = await a.take_offer()
    await a.write(s.session_id, 1, [started(1, t1.turn_id, "wkr_old"), completed(2, t1.turn_id)])
    # A goes silent (a partition): no renewals, its stream gone. The lease lapses.
    await a.close()
    await eventually(lambda: _lease_holder(client, s.session_id, ""), timeout=10, what="the old lease to expire")

    b = FakeWorker(target, "wkr_new")
    await b.register()
    await b.open_lease()
    try:
        t2 = await client.send_input(s.session_id, "echo second")
        offer_b = await b.take_offer()
        assert offer_b.lease_epoch == offer.lease_epoch + 1
        assert offer_b.resume_required

        # The old holder comes back and writes with its old epoch: refused, never stored.
        zombie = FakeWorker(target, "wkr_old")
        try:
            await _expect_error(
                zombie.write(s.session_id, offer.lease_epoch, [output(3, t2.turn_id, "zombie")]),
                grpc.StatusCode.FAILED_PRECONDITION,
                "LEASE_LOST",
            )
        finally:
            await zombie.close()
        await b.write(
            s.session_id,
            offer_b.lease_epoch,
            [started(1, t2.turn_id, "wkr_new"), output(2, t2.turn_id, "second\n"), completed(3, t2.turn_id)],
        )
        texts = await _texts(client, s.session_id)
        assert all("zombie" not in t for _, _, t in texts)
        assert [seq for seq, _, _ in texts] == list(range(1, len(texts) + 1))
        assert (await client.get_session(s.session_id)).lease_epoch == offer_b.lease_epoch
    finally:
        await b.close()


async def _lease_holder(client: sdk.AsyncClient, session_id: str, worker_id: str) -> bool:
    return (await client.get_session(session_id)).worker_id == worker_id


async def test_resent_events_are_stored_once_and_gaps_are_refused(control_plane, client):
    target = f"127.0.0.1:{control_plane.port}"
    a = FakeWorker(target, "wkr_dup")
    await a.register()
    await a.open_lease()
    try:
        s = await client.create_session("shell")
        t = await client.send_input(s.session_id, "echo x")
        offer = await a.take_offer()
        await a.write(s.session_id, offer.lease_epoch, [started(1, t.turn_id, "wkr_dup"), output(2, t.turn_id, "a")])
        # The ack was "lost": the worker resends 1-2 along with 3.
        acks = await a.write(
            s.session_id,
            offer.lease_epoch,
            [started(1, t.turn_id, "wkr_dup"), output(2, t.turn_id, "a"), output(3, t.turn_id, "b")],
        )
        assert acks[-1].acked_worker_seq == 3
        await _expect_error(
            a.write(s.session_id, offer.lease_epoch, [output(5, t.turn_id, "skipped 4")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        texts = await _texts(client, s.session_id)
        assert [(k, x) for _, k, x in texts] == [
            ("input_received", ""),
            ("turn_started", ""),
            ("output", "a"),
            ("output", "b"),
        ]
    finally:
        await a.close()


async def test_a_turn_never_stays_running_after_its_lease_is_gone(control_plane, client):
    from tether.v1 import worker_service_pb2 as wpb

    target = f"127.0.0.1:{control_plane.port}"
    s1 = await client.create_session("shell")
    s2 = await client.create_session("shell")
    # Lease expiry: the stream stays alive (heartbeats flow) but the lease is not renewed.
    forgetful = FakeWorker(target, "wkr_forgetful")
    await forgetful.register()
    await forgetful.open_lease()
    t1 = await client.send_input(s1.session_id, "sleep 100")
    await forgetful.take_offer()
    stop = asyncio.Event()

    async def heartbeat_without_leases() -> None:
        while not stop.is_set():
            forgetful.send(wpb.LeaseRequest(renew=wpb.RenewLeases()))
            await asyncio.sleep(0.1)

    beating = asyncio.create_task(heartbeat_without_leases())
    try:
        ended = await client.wait_for_turn(s1.session_id, t1.turn_id, timeout_s=10)
    finally:
        stop.set()
        await beating
        await forgetful.close()
    assert ended.state == sdk.TurnState.FAILED and "not renewed" in ended.error_message
    failed = [
        e async for e in client.stream_events(s1.session_id, stop_at_end=True) if e.kind == sdk.EventKind.TURN_FAILED
    ]
    assert len(failed) == 1 and failed[0].worker_lost
    session = await client.get_session(s1.session_id)
    assert session.worker_id == "" and session.state == sdk.SessionState.IDLE

    releasing = FakeWorker(target, "wkr_release")
    await releasing.register()
    await releasing.open_lease()
    try:
        t2 = await client.send_input(s2.session_id, "sleep 100")
        offer = await releasing.take_offer()
        releasing.send(
            wpb.LeaseRequest(release=wpb.ReleaseLease(session_id=s2.session_id, lease_epoch=offer.lease_epoch))
        )
        ended = await client.wait_for_turn(s2.session_id, t2.turn_id, timeout_s=10)
        assert ended.state == sdk.TurnState.FAILED and "released" in ended.error_message
        kinds = [k for _, k, _ in await _texts(client, s2.session_id)]
        assert kinds == ["input_received", "turn_failed"]
        await eventually(lambda: _lease_holder(client, s2.session_id, ""), timeout=5, what="lease freed")
        # The freed slot is usable at once: the next turn is offered to the same worker.
        await client.send_input(s2.session_id, "echo again")
        assert (await releasing.take_offer()).lease_epoch == offer.lease_epoch + 1
    finally:
        await releasing.close()
