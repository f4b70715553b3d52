"""Fencing: only the lease holder at the current epoch writes; anything else is LEASE_LOST and
stores nothing."""

from __future__ import annotations

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import IncomingEvent, IngestResult, RevokeMsg

from .harness import OTHER_OWNER, OWNER, Worker, finish_turn, new_hub, new_session, run_turn


async def _moved_session() -> tuple:
    """A session whose lease moved from w1 (epoch 1) to w2 (epoch 2) while w1 was draining."""
    hub, store = new_hub()
    w1, w2 = Worker(hub, "w1"), Worker(hub, "w2")
    await w1.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, w1, sid)
    await finish_turn(w1, first)
    await w2.connect()
    hub.worker_draining("w1")
    await hub.send_input(OWNER, sid, "again", "")
    second = w2.offer()
    await w2.accept(second)
    return hub, store, w1, w2, sid, first, second


async def test_a_stale_epoch_write_is_refused_and_nothing_is_stored() -> None:
    hub, store, w1, w2, sid, first, second = await _moved_session()
    assert (first.lease_epoch, second.lease_epoch) == (1, 2)
    assert [m.lease_epoch for m in w1.only(RevokeMsg)] == [1]  # the old holder heard of it
    stored_before = list(store.events[sid])

    with pytest.raises(errors.LeaseLost) as lost:
        w1.ingest(sid, first.lease_epoch, first.turn_id, "agent_message")

    assert lost.value.reason == "LEASE_LOST"
    assert lost.value.metadata["current_epoch"] == "2"
    assert store.events[sid] == stored_before
    assert hub.fenced_calls("w1") == 1
    # The holder at the current epoch still writes.
    result = await w2.write(sid, 2, second.turn_id, "turn_started")
    assert store.kinds(sid)[-1] == "turn_started" and result.last_seq == store.events[sid][-1].seq


async def test_a_stale_epoch_snapshot_is_refused_and_not_stored() -> None:
    hub, store, w1, w2, sid, first, second = await _moved_session()

    with pytest.raises(errors.LeaseLost):
        await hub.store_snapshot("w1", sid, first.lease_epoch, 1, "{}", b"", 0, "", OWNER)

    assert store.snapshots.get(sid, []) == []
    snap = await hub.store_snapshot("w2", sid, second.lease_epoch, 1, "{}", b"h", 1, "", OWNER)
    assert [s.snapshot_id for s in store.snapshots[sid]] == [snap.snapshot_id]


async def test_a_released_lease_takes_no_more_writes() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    await finish_turn(w1, offer)

    await hub.release("w1", sid, offer.lease_epoch, "idle")

    assert store.leases[sid].worker_id == "" and store.leases[sid].epoch == 1
    with pytest.raises(errors.LeaseLost):
        w1.ingest(sid, offer.lease_epoch, offer.turn_id, "agent_message")
    assert store.kinds(sid) == ["input_received", "turn_started", "turn_completed"]


async def test_another_owners_worker_is_answered_as_if_the_session_did_not_exist() -> None:
    hub, store = new_hub()
    mine, theirs = Worker(hub, "w1"), Worker(hub, "w2", owner=OTHER_OWNER)
    await mine.connect()
    await theirs.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, mine, sid)

    with pytest.raises(errors.LeaseLost) as lost:
        hub.ingest("w2", sid, offer.lease_epoch, [], OTHER_OWNER)
    assert lost.value.metadata["current_epoch"] == "0"
    with pytest.raises(errors.LeaseLost):
        hub.check_lease("w1", sid, offer.lease_epoch, OTHER_OWNER)
    assert theirs.inbox() == []  # never offered another owner's turn
    assert hub.fenced_calls("w2") == 1


async def test_ingest_drops_a_resent_prefix_and_refuses_a_gap() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)  # turn_started is worker_seq 1
    resent = hub.ingest("w1", sid, 1, [IncomingEvent(1, offer.turn_id, "turn_started", b"turn_started")], OWNER)
    assert isinstance(resent, IngestResult)
    assert (resent.committed, resent.acked_worker_seq, resent.events) == (None, 1, [])
    assert resent.last_seq == store.events[sid][-1].seq

    with pytest.raises(errors.InvalidArgument) as gap:
        hub.ingest("w1", sid, 1, [IncomingEvent(3, offer.turn_id, "agent_message", b"")], OWNER)
    assert "continue at 2" in gap.value.message
    assert store.kinds(sid) == ["input_received", "turn_started"]
