"""SendInput's policy when a turn is queued or running: ENQUEUE queues after it, REJECT refuses
(SESSION_BUSY, nothing stored), INTERRUPT interrupts the running turn, ends the queued ones and
runs the new turn next. Two racing calls: the second sees the first's turn."""

from __future__ import annotations

import asyncio

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import InterruptMsg, OfferMsg
from tether.control_plane.domain.model import InputPolicy, TurnState

from .harness import OWNER, Worker, finish_turn, new_hub, new_session, run_turn, settle

ENQUEUE, REJECT, INTERRUPT = InputPolicy.ENQUEUE, InputPolicy.REJECT, InputPolicy.INTERRUPT


async def _running():
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w, sid, "first")
    return hub, store, w, sid, offer


async def test_enqueue_runs_the_new_turn_after_the_running_one() -> None:
    hub, store, w, sid, first = await _running()
    second, _ = await hub.send_input(OWNER, sid, "second", "", ENQUEUE)
    assert second.state == TurnState.QUEUED and w.only(InterruptMsg) == []
    await finish_turn(w, first)
    assert w.offer().turn_id == second.turn_id


async def test_reject_refuses_a_busy_session_and_stores_nothing_but_takes_an_idle_one() -> None:
    hub, store, w, sid, first = await _running()
    events, turns = list(store.events[sid]), len(store.turns)
    with pytest.raises(errors.SessionBusy) as busy:
        await hub.send_input(OWNER, sid, "second", "", REJECT)
    assert busy.value.code == "FAILED_PRECONDITION" and first.turn_id in busy.value.message
    assert busy.value.metadata["turn_id"] == first.turn_id
    assert (store.events[sid], len(store.turns)) == (events, turns)
    assert (await hub.get_session(OWNER, sid)).session.turn_count == 1
    await finish_turn(w, first)
    turn, _ = await hub.send_input(OWNER, sid, "second", "", REJECT)
    assert w.offer().turn_id == turn.turn_id


async def test_reject_refuses_a_queued_turn_too() -> None:
    hub, store = new_hub()  # no worker: the first turn stays queued
    sid = await new_session(hub)
    queued, _ = await hub.send_input(OWNER, sid, "first", "", ENQUEUE)
    with pytest.raises(errors.SessionBusy):
        await hub.send_input(OWNER, sid, "second", "", REJECT)
    assert [t.turn_id for t in store.turns.values()] == [queued.turn_id]


async def test_interrupt_stops_the_running_turn_ends_the_queued_ones_and_runs_next() -> None:
    hub, store, w, sid, first = await _running()
    queued, _ = await hub.send_input(OWNER, sid, "queued", "", ENQUEUE)

    urgent, _ = await hub.send_input(OWNER, sid, "urgent", "", INTERRUPT)

    assert w.only(InterruptMsg) == [InterruptMsg(sid, first.turn_id, "interrupted by new input (policy interrupt)")]
    assert store.turns[queued.turn_id].state == TurnState.INTERRUPTED
    kinds = [(e.turn_id, e.kind) for e in store.events[sid]][-2:]
    assert kinds == [(queued.turn_id, "turn_interrupted"), (urgent.turn_id, "input_received")]
    running = await hub.get_turn(OWNER, sid, first.turn_id)
    assert running.state == TurnState.RUNNING and running.interrupt_time_us > 0
    # The worker stops the running turn; the urgent one is offered next, the queued one never.
    await w.write(sid, first.lease_epoch, first.turn_id, "turn_interrupted")
    assert w.offer().turn_id == urgent.turn_id


async def test_interrupt_ends_an_offered_turn_that_no_worker_accepted_yet() -> None:
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    await hub.send_input(OWNER, sid, "first", "", ENQUEUE)
    offered = w.offer()
    urgent, _ = await hub.send_input(OWNER, sid, "urgent", "", INTERRUPT)
    assert store.turns[offered.turn_id].state == TurnState.INTERRUPTED
    await settle()
    assert w.offer().turn_id == urgent.turn_id


async def test_interrupt_on_an_idle_session_is_a_plain_send_and_a_matching_key_returns_the_first_turn() -> None:
    hub, store, w, sid, first = await _running()
    await finish_turn(w, first)
    turn, dedup = await hub.send_input(OWNER, sid, "second", "k", INTERRUPT)
    messages = w.inbox()
    assert not dedup and not any(isinstance(m, InterruptMsg) for m in messages)
    [offer] = [m for m in messages if isinstance(m, OfferMsg)]
    await w.accept(offer)
    again, dedup = await hub.send_input(OWNER, sid, "second", "k", REJECT)
    assert dedup and again.turn_id == turn.turn_id  # a retry is not refused as busy


@pytest.mark.parametrize("policy", [REJECT, INTERRUPT])
async def test_two_racing_sends_the_second_sees_the_first(policy: InputPolicy) -> None:
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    results = await asyncio.gather(
        hub.send_input(OWNER, sid, "a", "", policy),
        hub.send_input(OWNER, sid, "b", "", policy),
        return_exceptions=True,
    )
    if policy == REJECT:
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, errors.SessionBusy)]
        assert len(won) == 1 and len(lost) == 1, results
        assert [t.input for t in store.turns.values()] == [won[0][0].input]
    else:
        (a, _), (b, _) = results  # type: ignore[misc]
        # The second interrupted the first (still queued or offered, so it ended at once).
        assert store.turns[a.turn_id].state == TurnState.INTERRUPTED
        await settle()
        offers = [m for m in w.inbox() if isinstance(m, OfferMsg)]
        assert offers[-1].turn_id == b.turn_id


@pytest.mark.parametrize("how", ["InterruptTurn", "SendInput(policy interrupt)"])
async def test_an_interrupt_right_after_the_accept_reaches_the_worker_after_its_grant(how: str) -> None:
    """The turn is RUNNING once accepted, but the grant is pushed when the accept commits; an
    interrupt sent in between must not overtake it (the worker would drop it as one for a turn
    it does not run, and the turn would run until the interrupt grace)."""
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    await hub.send_input(OWNER, sid, "first", "", ENQUEUE)
    offer = w.offer()
    accepting = asyncio.create_task(w.accept(offer))
    await asyncio.sleep(0)  # accepted: RUNNING, its commit (and so the grant) still to come
    assert (await hub.get_turn(OWNER, sid, offer.turn_id)).state == TurnState.RUNNING
    if how == "InterruptTurn":
        await hub.interrupt_turn(OWNER, sid, offer.turn_id, "stop")
    else:
        await hub.send_input(OWNER, sid, "urgent", "", INTERRUPT)
    await accepting
    kinds = [type(m).__name__ for m in w.inbox()]
    assert kinds.index("GrantMsg") < kinds.index("InterruptMsg"), kinds
