"""RevertSession: the head moves back to the end of an ended turn; the later turns are marked
reverted and stay readable; the log gets a session_reverted event (nothing is deleted); the
warm holder loses the lease, so the next turn runs at a new epoch and resumes; a busy session,
an open or reverted turn, and another owner are refused with nothing stored."""

from __future__ import annotations

import asyncio

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import RevokeMsg
from tether.control_plane.domain.model import TurnState

from .harness import OTHER_OWNER, OWNER, Worker, finish_turn, new_hub, new_session, run_turn


async def _three_turns():
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    turns = []
    for text in ("one", "two", "three"):
        offer = await run_turn(hub, w, sid, text)
        await w.write(sid, offer.lease_epoch, offer.turn_id, "output")
        await finish_turn(w, offer)
        turns.append(offer.turn_id)
    w.inbox()
    return hub, store, w, sid, turns


async def test_a_revert_marks_the_later_turns_logs_it_and_takes_the_lease_back() -> None:
    hub, store, w, sid, (t1, t2, t3) = await _three_turns()
    events_before = list(store.events[sid])

    view = await hub.revert_session(OWNER, sid, t1)

    assert [store.turns[t].reverted for t in (t1, t2, t3)] == [False, True, True]
    assert [store.turns[t].state for t in (t2, t3)] == [TurnState.COMPLETED] * 2  # readable as they were
    assert (await hub.get_turn(OWNER, sid, t3)).reverted
    assert store.events[sid][: len(events_before)] == events_before  # append-only
    [event] = store.events[sid][len(events_before) :]
    assert (event.kind, event.turn_id, event.body) == (
        "session_reverted",
        t1,
        f"session_reverted:{t1}:{t2},{t3}".encode(),
    )
    assert view.worker_id == "" and store.leases[sid].worker_id == ""
    assert w.only(RevokeMsg) == [
        RevokeMsg(sid, 1, f"the session was reverted to turn {t1}; its next turn rehydrates that history")
    ]
    # The next turn goes out at a new epoch and must resume (the warm runtime is gone).
    offer = await run_turn(hub, w, sid, "four")
    assert (offer.lease_epoch, offer.resume_required) == (2, True)


async def test_reverting_again_to_a_later_reverted_turn_is_refused_and_to_an_earlier_one_adds_to_it() -> None:
    hub, store, w, sid, (t1, t2, t3) = await _three_turns()
    await hub.revert_session(OWNER, sid, t2)
    with pytest.raises(errors.TurnReverted) as refused:
        await hub.revert_session(OWNER, sid, t3)
    assert refused.value.code == "FAILED_PRECONDITION"
    await hub.revert_session(OWNER, sid, t1)
    last = store.events[sid][-1]
    assert (last.kind, last.body) == ("session_reverted", f"session_reverted:{t1}:{t2}".encode())
    # A fork carries the model-visible history only: turn 1, numbered 1.
    fork = await hub.fork_session(OWNER, sid, t1)
    forked = [t for t in store.turns.values() if t.session_id == fork.session.session_id]
    assert [(t.ordinal, t.input) for t in forked] == [(1, "one")]
    assert "session_reverted" not in [e.kind for e in store.events[fork.session.session_id]]


async def test_a_busy_session_an_open_turn_and_other_owners_are_refused_with_nothing_stored() -> None:
    hub, store, w, sid, (t1, _, _) = await _three_turns()
    with pytest.raises(errors.TurnNotFound):
        await hub.revert_session(OWNER, sid, "trn_nope")
    with pytest.raises(errors.SessionNotFound):
        await hub.revert_session(OTHER_OWNER, sid, t1)
    running = await run_turn(hub, w, sid, "four")
    stored = (list(store.events[sid]), {k: t.reverted for k, t in store.turns.items()})
    with pytest.raises(errors.SessionBusy) as busy:
        await hub.revert_session(OWNER, sid, t1)
    assert running.turn_id in busy.value.message
    assert (store.events[sid], {k: t.reverted for k, t in store.turns.items()}) == stored


async def test_two_reverts_at_once_one_waits_its_turn_as_busy() -> None:
    hub, store, w, sid, (t1, t2, _) = await _three_turns()
    results = await asyncio.gather(
        hub.revert_session(OWNER, sid, t1), hub.revert_session(OWNER, sid, t2), return_exceptions=True
    )
    assert sum(isinstance(r, errors.SessionBusy) for r in results) == 1, results
    assert [e.kind for e in store.events[sid]].count("session_reverted") == 1
