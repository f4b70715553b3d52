"""Granted offers (the control plane's grant_with_offer policy, off by default): a sticky
turn for a worker that announced "granted_offer" is stored as running in the same commit as its input, and its offer, grant included, goes out only once
that commit is durable: no AcceptOffer round. Every other placement still waits for an accept.
When the offer crosses the worker's release of the session, the turn is queued again, never
failed and never run twice."""

from __future__ import annotations

import pytest

from tests.helpers.processes import eventually
from tether.control_plane.domain.messages import GrantMsg, OfferMsg
from tether.control_plane.domain.model import TurnState

from .harness import OWNER, Worker, finish_turn, new_hub, new_session, run_turn, settle

GRANTED = ("granted_offer",)


async def _warm(hub, store, worker: Worker) -> tuple[str, OfferMsg]:
    """A session whose first turn ran (and ended) on `worker`: it holds the warm runtime."""
    sid = await new_session(hub)
    first = await run_turn(hub, worker, sid)
    await finish_turn(worker, first)
    return sid, first


async def test_a_sticky_turn_is_stored_running_with_its_input_and_its_offer_carries_the_grant() -> None:
    hub, store = new_hub(grant_with_offer=True)
    holder = Worker(hub, "holder", slots=1, features=GRANTED)
    await holder.connect()
    sid, first = await _warm(hub, store, holder)
    assert first.granted is None  # a first placement is accepted as before
    commits = store.commits

    turn, _ = await hub.send_input(OWNER, sid, "next", "")

    # One commit: the input, its event and the turn already running under the lease.
    assert store.commits == commits + 1
    stored = store.turns[turn.turn_id]
    assert (stored.state, stored.worker_id, stored.lease_epoch) == (TurnState.RUNNING, "holder", first.lease_epoch)
    offer = holder.offer()
    assert offer.turn_id == turn.turn_id and not offer.resume_required
    assert isinstance(offer.granted, GrantMsg)
    assert (offer.granted.turn_id, offer.granted.lease_epoch) == (turn.turn_id, first.lease_epoch)
    # Nothing to accept: the worker writes the turn's events at once.
    await holder.write(sid, offer.lease_epoch, offer.turn_id, "turn_started", "turn_completed")
    assert store.turns[turn.turn_id].state == TurnState.COMPLETED


async def test_a_worker_without_the_feature_still_accepts_each_offer() -> None:
    hub, store = new_hub(grant_with_offer=True)
    holder = Worker(hub, "holder", slots=1)
    await holder.connect()
    sid, first = await _warm(hub, store, holder)

    turn, _ = await hub.send_input(OWNER, sid, "next", "")

    offer = holder.offer()
    assert offer.granted is None
    assert store.turns[turn.turn_id].state == TurnState.QUEUED
    await holder.accept(offer)
    await settle()
    assert [m.turn_id for m in holder.only(GrantMsg)] == [turn.turn_id]


async def test_a_turn_queued_behind_a_running_one_is_granted_with_its_offer_when_that_ends() -> None:
    hub, store = new_hub(grant_with_offer=True)
    holder = Worker(hub, "holder", slots=1, features=GRANTED)
    await holder.connect()
    sid, _ = await _warm(hub, store, holder)
    second, _ = await hub.send_input(OWNER, sid, "second", "")
    offer = holder.offer()
    third, _ = await hub.send_input(OWNER, sid, "third", "")
    assert store.turns[third.turn_id].state == TurnState.QUEUED
    assert holder.inbox() == []

    await holder.write(sid, offer.lease_epoch, offer.turn_id, "turn_started", "turn_completed")
    await settle()

    nxt = holder.offer()
    assert nxt.turn_id == third.turn_id and nxt.granted is not None
    assert store.turns[third.turn_id].state == TurnState.RUNNING


async def test_a_failed_commit_sends_no_granted_offer() -> None:
    hub, store = new_hub(grant_with_offer=True)
    holder = Worker(hub, "holder", slots=1, features=GRANTED)
    await holder.connect()
    sid, _ = await _warm(hub, store, holder)
    store.fail_next = 1
    try:
        await hub.send_input(OWNER, sid, "next", "")
    except Exception as exc:  # the caller hears UNAVAILABLE
        assert "did not accept the write" in str(exc)
    else:
        raise AssertionError("the input was acknowledged though its commit failed")
    await settle()
    assert holder.only(OfferMsg) == []
    assert not any(t.input == "next" for t in store.turns.values())


async def test_an_offer_that_crosses_the_workers_release_is_queued_again_not_failed() -> None:
    hub, store = new_hub(grant_with_offer=True)
    holder = Worker(hub, "holder", slots=1, features=GRANTED)
    await holder.connect()
    sid, first = await _warm(hub, store, holder)
    turn, _ = await hub.send_input(OWNER, sid, "next", "")
    granted = holder.offer()
    assert granted.granted is not None

    # The worker had cooled the session and released it as the offer was on its way.
    await hub.release("holder", sid, first.lease_epoch, "cooled")
    await settle()

    assert store.turns[turn.turn_id].state != TurnState.FAILED
    offer = holder.offer()  # placed afresh: at the next epoch, with a rehydration, to accept
    assert offer.turn_id == turn.turn_id
    assert offer.lease_epoch == first.lease_epoch + 1 and offer.resume_required and offer.granted is None
    await holder.accept(offer)
    await holder.write(sid, offer.lease_epoch, offer.turn_id, "turn_started", "turn_completed")
    assert store.turns[turn.turn_id].state == TurnState.COMPLETED
    kinds = [e.kind for e in store.events[sid]]
    assert "turn_failed" not in kinds


async def test_a_release_after_the_worker_began_the_granted_turn_fails_it_as_before() -> None:
    hub, store = new_hub(grant_with_offer=True)
    holder = Worker(hub, "holder", slots=1, features=GRANTED)
    await holder.connect()
    sid, first = await _warm(hub, store, holder)
    turn, _ = await hub.send_input(OWNER, sid, "next", "")
    offer = holder.offer()
    await holder.write(sid, offer.lease_epoch, offer.turn_id, "turn_started")

    await hub.release("holder", sid, first.lease_epoch, "giving up")
    await settle()

    assert store.turns[turn.turn_id].state == TurnState.FAILED


async def test_by_default_a_worker_with_the_feature_still_accepts_each_offer() -> None:
    hub, store = new_hub()  # grant_with_offer is off unless the control plane is told
    holder = Worker(hub, "holder", slots=1, features=GRANTED)
    await holder.connect()
    sid, _ = await _warm(hub, store, holder)

    turn, _ = await hub.send_input(OWNER, sid, "next", "")

    offer = holder.offer()
    assert offer.granted is None and not offer.resume_required
    assert store.turns[turn.turn_id].state == TurnState.QUEUED


@pytest.mark.parametrize("grant_with_offer", [True, False])
async def test_the_trade_off_a_turn_granted_to_a_worker_already_dead_fails_rather_than_moves(grant_with_offer) -> None:
    """What the policy gives up, and why it is off by default: the grant went out with the
    offer, so the worker may have begun the turn; one lost before it wrote for the turn is
    never run again elsewhere (it could run twice). Without the policy the same turn is
    still only offered, so it moves to the other worker."""
    hub, store = new_hub(worker_dead_grace_s=0.01, grant_with_offer=grant_with_offer)
    holder, other = Worker(hub, "holder", features=GRANTED), Worker(hub, "other", features=GRANTED)
    await holder.connect()
    sid, first = await _warm(hub, store, holder)
    await other.connect()
    # The holder has died, and the control plane has not noticed yet.
    turn, _ = await hub.send_input(OWNER, sid, "next", "")
    holder.disconnect()
    await eventually(lambda: store.leases[sid].worker_id != "holder", timeout=5, what="the holder's lease to go")
    await settle()
    if grant_with_offer:
        assert store.turns[turn.turn_id].state == TurnState.FAILED
        assert other.only(OfferMsg) == []
    else:
        moved = other.offer()
        assert (moved.turn_id, moved.lease_epoch, moved.resume_required) == (turn.turn_id, first.lease_epoch + 1, True)
