"""Scheduling: a session's next turn goes to the warm holder at the same epoch; it moves, at the
next epoch and with a rehydration, when the holder stays busy past the sticky timeout, and at
once when the holder drains or no longer has the runtime. Drain stops offers to a worker."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.processes import eventually
from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import DrainMsg, OfferMsg

from .harness import OTHER_OWNER, OWNER, Worker, finish_turn, new_hub, new_session, run_turn, settle


async def test_the_next_turn_goes_to_the_warm_holder_at_the_same_epoch() -> None:
    hub, store = new_hub()
    holder = Worker(hub, "holder", slots=1)
    await holder.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, holder, sid)
    await finish_turn(holder, first)
    roomy = Worker(hub, "roomy", slots=8)  # more free slots: it would win a placement
    await roomy.connect()

    await hub.send_input(OWNER, sid, "next", "")

    offer = holder.offer()
    assert (offer.lease_epoch, offer.resume_required) == (first.lease_epoch, False)
    assert roomy.inbox() == []


async def test_a_first_turn_goes_to_the_eligible_worker_with_the_most_free_slots() -> None:
    hub, store = new_hub()
    small, big = Worker(hub, "small", slots=1), Worker(hub, "big", slots=4)
    wrong_runtime = Worker(hub, "codex", slots=16, runtimes=["codex"])
    others = Worker(hub, "others", slots=16, owner=OTHER_OWNER)
    for w in (small, big, wrong_runtime, others):
        await w.connect()
    sid = await new_session(hub)

    await hub.send_input(OWNER, sid, "hi", "")

    offer = big.offer()
    assert (offer.lease_epoch, offer.resume_required) == (1, True)
    assert small.inbox() == wrong_runtime.inbox() == others.inbox() == []


async def _busy_holder(**timings: float) -> tuple:
    """`holder` (one slot) holds session `sid` warm and is busy running another session's turn."""
    hub, store = new_hub(**timings)
    holder = Worker(hub, "holder", slots=1)
    await holder.connect()
    sid, other = await new_session(hub), await new_session(hub)
    first = await run_turn(hub, holder, sid)
    await finish_turn(holder, first)
    await run_turn(hub, holder, other)  # takes its only slot
    return hub, store, holder, sid, first


async def test_a_busy_holder_is_waited_for_until_the_sticky_timeout_then_the_session_moves() -> None:
    hub, store, holder, sid, first = await _busy_holder(sticky_timeout_s=0.1)
    await hub.send_input(OWNER, sid, "next", "")
    free = Worker(hub, "free", slots=1)
    await free.connect()  # a scheduling pass within the sticky timeout
    assert free.inbox() == [] and holder.only(OfferMsg) == []

    await asyncio.sleep(0.12)
    late = Worker(hub, "late", slots=2)
    await late.connect()  # the next scheduling pass, past the timeout

    offer = late.offer()
    assert (offer.lease_epoch, offer.resume_required) == (first.lease_epoch + 1, True)
    assert free.inbox() == [] and holder.only(OfferMsg) == []


async def test_a_busy_holder_keeps_the_session_within_the_sticky_timeout() -> None:
    hub, store, holder, sid, first = await _busy_holder(sticky_timeout_s=30.0)
    await hub.send_input(OWNER, sid, "next", "")
    free = Worker(hub, "free", slots=4)
    await free.connect()
    assert free.inbox() == []
    assert (await hub.get_session(OWNER, sid)).worker_id == "holder"


async def test_a_draining_holder_loses_the_next_turn_at_once() -> None:
    hub, store = new_hub()
    holder, other = Worker(hub, "holder"), Worker(hub, "other")
    await holder.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, holder, sid)
    await finish_turn(holder, first)
    await other.connect()

    status = hub.drain_worker(OWNER, "holder", grace_s=None)
    await hub.send_input(OWNER, sid, "next", "")

    assert status.draining and holder.only(DrainMsg) == [DrainMsg(0)]
    offer = other.offer()
    assert (offer.lease_epoch, offer.resume_required) == (first.lease_epoch + 1, True)
    assert holder.only(OfferMsg) == []


async def test_a_holder_that_restarted_without_the_runtime_loses_the_session_at_once() -> None:
    hub, store = new_hub()
    holder, other = Worker(hub, "holder"), Worker(hub, "other", slots=2)
    await holder.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, holder, sid)
    await finish_turn(holder, first)
    await other.connect()

    await holder.connect(held=[])  # a new process: it claims no lease
    await settle()  # the lease is freed in the background
    assert store.leases[sid].worker_id == ""
    await hub.send_input(OWNER, sid, "next", "")

    offer = other.offer()
    assert (offer.lease_epoch, offer.resume_required) == (first.lease_epoch + 1, True)


async def test_a_holder_gone_past_the_worker_dead_grace_loses_its_sessions() -> None:
    hub, store = new_hub(worker_dead_grace_s=0.01)
    holder, other = Worker(hub, "holder"), Worker(hub, "other")
    await holder.connect()
    sid = await new_session(hub)
    running = await run_turn(hub, holder, sid)
    await other.connect()

    holder.disconnect()
    await eventually(
        lambda: store.leases[sid].worker_id == "", timeout=5, what="the worker-dead grace to free the lease"
    )

    lease = store.leases[sid]
    assert (lease.worker_id, lease.epoch) == ("", running.lease_epoch)
    assert store.turns[running.turn_id].state.name == "FAILED"
    await hub.send_input(OWNER, sid, "next", "")
    assert other.offer().lease_epoch == running.lease_epoch + 1


async def test_a_draining_worker_gets_no_offers_and_gives_back_an_unaccepted_one() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1", slots=2)
    await w1.connect()
    sid = await new_session(hub)
    await hub.send_input(OWNER, sid, "hi", "")
    offered = w1.offer()
    w2 = Worker(hub, "w2", slots=1)
    await w2.connect()

    hub.drain_worker(OWNER, "w1", grace_s=5.0)

    moved = w2.offer()  # the offer w1 had not accepted went to w2
    assert (moved.turn_id, moved.lease_epoch) == (offered.turn_id, offered.lease_epoch)
    late = await new_session(hub)
    await hub.send_input(OWNER, late, "hi", "")
    assert w1.only(OfferMsg) == []  # not even for a session w1 never held
    statuses = {st.info.worker_id: st for st in hub.worker_statuses(OWNER)}
    assert statuses["w1"].draining and not statuses["w2"].draining


async def test_drain_names_only_a_connected_worker_of_the_callers_owner() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    with pytest.raises(errors.WorkerNotFound):
        hub.drain_worker(OTHER_OWNER, "w1", None)
    hub.drain_worker(None, "w1", None)  # an admin drains any owner's worker
    w1.disconnect()
    with pytest.raises(errors.WorkerNotConnected):
        hub.drain_worker(OWNER, "w1", None)
