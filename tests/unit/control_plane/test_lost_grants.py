"""A grant lost with its Lease stream: the control plane stored the turn running on the worker
(AcceptOffer's commit, or the input's commit for a granted offer) but the stream broke before
the OfferGranted (or the granted Offer) reached the worker, which then forgets the accepted
offer. A worker that reports the turns it knows ("reports_turns", LeaseOpen.turn_ids) gets
such a turn offered again when it reattaches; a turn it does know stays running; a worker
without the feature is trusted as before."""

from __future__ import annotations

import pytest

from tether.control_plane.domain.messages import GrantMsg, OfferMsg
from tether.control_plane.domain.model import TurnState

from .harness import OWNER, Worker, finish_turn, new_hub, new_session, run_turn, settle

REPORTS = ("reports_turns",)


async def _grant_lost(grant_with_offer: bool, features: tuple[str, ...]):
    """A warm session on `holder` whose next turn is stored running there, its grant sent on
    a stream that then broke."""
    hub, store = new_hub(grant_with_offer=grant_with_offer, worker_dead_grace_s=30)
    holder = Worker(hub, "holder", slots=1, features=features)
    await holder.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, holder, sid)
    await finish_turn(holder, first)
    turn, _ = await hub.send_input(OWNER, sid, "next", "")
    offer = holder.offer()
    if offer.granted is None:
        await holder.accept(offer)
        await settle()
        assert holder.only(GrantMsg), "the grant was sent"
    assert store.turns[turn.turn_id].state == TurnState.RUNNING
    holder.disconnect()  # the grant went down with the stream
    return hub, store, holder, sid, turn, first


@pytest.mark.parametrize("grant_with_offer", [False, True], ids=["accepted", "granted-offer"])
async def test_a_turn_the_reattaching_worker_does_not_know_is_offered_again(grant_with_offer) -> None:
    hub, store, holder, sid, turn, first = await _grant_lost(grant_with_offer, REPORTS + ("granted_offer",))

    lost = await holder.connect(held=[(sid, first.lease_epoch)], known_turns=set())
    await settle()

    assert lost == []
    again = holder.only(OfferMsg)
    assert [o.turn_id for o in again] == [turn.turn_id]
    assert again[0].lease_epoch == first.lease_epoch and not again[0].resume_required
    if again[0].granted is None:
        assert store.turns[turn.turn_id].state == TurnState.QUEUED
        await holder.accept(again[0])
        await settle()
    await holder.write(sid, first.lease_epoch, turn.turn_id, "turn_started", "turn_completed")
    assert store.turns[turn.turn_id].state == TurnState.COMPLETED
    assert "turn_failed" not in [e.kind for e in store.events[sid]]


async def test_a_turn_the_reattaching_worker_knows_stays_running() -> None:
    hub, store, holder, sid, turn, first = await _grant_lost(False, REPORTS)

    await holder.connect(held=[(sid, first.lease_epoch)], known_turns={turn.turn_id})
    await settle()

    assert holder.only(OfferMsg) == []
    assert store.turns[turn.turn_id].state == TurnState.RUNNING
    await holder.write(sid, first.lease_epoch, turn.turn_id, "turn_started", "turn_completed")
    assert store.turns[turn.turn_id].state == TurnState.COMPLETED


async def test_a_worker_without_the_feature_is_taken_to_run_it_as_before() -> None:
    hub, store, holder, sid, turn, first = await _grant_lost(False, ())

    await holder.connect(held=[(sid, first.lease_epoch)], known_turns=set())
    await settle()

    assert holder.only(OfferMsg) == []
    assert store.turns[turn.turn_id].state == TurnState.RUNNING


async def test_a_control_plane_killed_between_a_granted_offers_commit_and_its_send_loses_no_turn() -> None:
    """With --grant-with-offer the turn is stored running in its input's commit and its offer
    goes out after it. Killed in between: the restarted control plane loads the turn as running
    on the holder, the holder reattaches without it, and it is offered again and runs once."""
    hub, store = new_hub(grant_with_offer=True)
    holder = Worker(hub, "holder", slots=1, features=REPORTS + ("granted_offer",))
    await holder.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, holder, sid)
    await finish_turn(holder, first)
    turn, _ = await hub.send_input(OWNER, sid, "next", "")
    holder.inbox()  # the granted offer never leaves: the process dies here
    assert store.turns[turn.turn_id].state == TurnState.RUNNING

    restarted, _ = new_hub(store, grant_with_offer=True)
    await restarted.start()
    try:
        again = holder  # the same worker process (it numbers its events on), reconnecting
        again.hub = restarted
        assert await again.connect(held=[(sid, first.lease_epoch)], known_turns=set()) == []
        await settle()
        offer = again.offer()
        assert (offer.turn_id, offer.lease_epoch) == (turn.turn_id, first.lease_epoch)
        if offer.granted is None:
            await again.accept(offer)
            await settle()
        await again.write(sid, first.lease_epoch, turn.turn_id, "turn_started", "turn_completed")
        assert store.turns[turn.turn_id].state == TurnState.COMPLETED
        assert [e.kind for e in store.events[sid]].count("turn_completed") == 2
    finally:
        await restarted.stop()
