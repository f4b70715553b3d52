"""A turn is offered while its input's commit is in flight (SendInput), so the offer and its
AcceptOffer travel during the commit; nothing is granted before the commit. The commit failing,
or the control plane dying before it, leaves nothing running and nothing stored: the worker
accepted an offer whose grant never comes, and forgets it when its stream closes."""

from __future__ import annotations

import asyncio

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import CloseMsg, GrantMsg, OfferMsg
from tether.control_plane.domain.model import TurnState

from .harness import OWNER, Worker, new_hub, new_session, run_turn, settle


async def _offered_in_flight():
    """A session whose input's commit is held, and the worker's acceptance of its offer."""
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    store.paused = True  # the input's commit is in flight until resumed
    sending = asyncio.create_task(hub.send_input(OWNER, sid, "hi", ""))
    await settle()
    offer = w.offer()  # out before the commit
    assert not sending.done() and offer.turn_id not in store.turns
    accepting = asyncio.create_task(w.accept(offer))
    await settle()
    assert w.only(GrantMsg) == [] and not accepting.done(), "granted before the turn was stored"
    return hub, store, w, sid, offer, sending, accepting


async def test_the_grant_waits_for_the_commit_the_offer_did_not() -> None:
    hub, store, w, sid, offer, sending, accepting = await _offered_in_flight()

    store.resume()
    await settle()
    turn, _ = await sending
    await accepting

    assert [g.turn_id for g in w.only(GrantMsg)] == [turn.turn_id] == [offer.turn_id]
    assert store.turns[turn.turn_id].state == TurnState.RUNNING
    assert [e.kind for e in store.events[sid]] == ["input_received"]


async def test_a_failed_commit_grants_nothing_and_the_caller_hears_unavailable() -> None:
    hub, store, w, sid, offer, sending, accepting = await _offered_in_flight()

    store.fail_next = 1
    store.resume()
    await settle()
    with pytest.raises(errors.Unavailable):
        await sending
    await accepting

    inbox = w.inbox()
    assert not [m for m in inbox if isinstance(m, GrantMsg)]
    assert [m for m in inbox if isinstance(m, CloseMsg)], "the recovery closes the stream: the offer is forgotten"
    assert offer.turn_id not in store.turns and sid not in store.events


async def test_a_control_plane_killed_before_the_commit_leaves_nothing_to_run() -> None:
    hub, store, w, sid, offer, sending, accepting = await _offered_in_flight()

    # The process dies with the commit in flight: it never happens, and SendInput never answered.
    store.lose_held()
    sending.cancel()
    accepting.cancel()
    await asyncio.gather(sending, accepting, return_exceptions=True)

    restarted, _ = new_hub(store)
    await restarted.start()
    try:
        w.hub = restarted  # the worker reconnects; its accepted offer got no grant, so it forgot it
        assert await w.connect() == []
        await settle()
        assert w.only(OfferMsg) == []
        assert offer.turn_id not in store.turns and sid not in store.events
        # The session goes on: the app, which never got an answer, sends the input again.
        again = await run_turn(restarted, w, sid, "hi")
        assert again.turn_id != offer.turn_id
        assert store.turns[again.turn_id].state == TurnState.RUNNING
    finally:
        await restarted.stop()


@pytest.mark.parametrize("fails", [False, True], ids=["stored", "failed"])
async def test_a_repeated_key_is_answered_only_once_the_first_calls_commit_is_done(fails: bool) -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    store.paused = True
    first = asyncio.create_task(hub.send_input(OWNER, sid, "hi", "key-1"))
    await settle()
    repeat = asyncio.create_task(hub.send_input(OWNER, sid, "hi", "key-1"))
    await settle()
    assert not first.done() and not repeat.done(), "a repeat answered for a turn not yet stored"

    store.fail_next = 1 if fails else 0
    store.resume()
    await settle()
    if fails:
        for call in (first, repeat):
            with pytest.raises(errors.Unavailable):
                await call
        assert not store.turns
    else:
        (turn, deduplicated), (again, repeated) = await first, await repeat
        assert (again.turn_id, deduplicated, repeated) == (turn.turn_id, False, True)
        assert list(store.turns) == [turn.turn_id]


async def test_an_input_whose_caller_goes_away_mid_commit_is_still_granted() -> None:
    hub, store, w, sid, offer, sending, accepting = await _offered_in_flight()

    sending.cancel()  # the app's SendInput is cancelled while the commit is in flight
    await asyncio.gather(sending, return_exceptions=True)
    store.resume()
    await settle()
    await accepting  # the worker's Lease stream carries on: nothing raised into it

    assert [g.turn_id for g in w.only(GrantMsg)] == [offer.turn_id]
    assert store.turns[offer.turn_id].state == TurnState.RUNNING
