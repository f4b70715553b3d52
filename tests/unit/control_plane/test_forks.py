"""ForkSession: a new session holding another one's turns up to an ended turn, with their events
renumbered from 1, their requests and their ids rebound; the source stays as it was, and the
fork's next turn resumes from the copied log on a lease of its own."""

from __future__ import annotations

import copy

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.model import TurnState

from .harness import OTHER_OWNER, OWNER, Worker, finish_turn, new_hub, new_session, run_turn

ANSWER = {"answers": {}}


async def _three_turns():
    """Turn 1 (with an answered request), turn 2, and turn 3 sent while turn 2 ran, so its
    input sits among turn 2's events; all three completed."""
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    t1 = await run_turn(hub, w, sid, "one")
    request = await w.open_request(t1)
    await hub.respond_to_request(OWNER, sid, request.request_id, ANSWER, "{}")
    await w.write(sid, t1.lease_epoch, t1.turn_id, "output")
    await finish_turn(w, t1)
    t2 = await run_turn(hub, w, sid, "two")
    await w.write(sid, t2.lease_epoch, t2.turn_id, "output")
    t3_turn, _ = await hub.send_input(OWNER, sid, "three", "")
    await finish_turn(w, t2)
    t3 = w.offer()
    assert t3.turn_id == t3_turn.turn_id
    await w.accept(t3)
    await w.write(sid, t3.lease_epoch, t3.turn_id, "turn_started", "output")
    await finish_turn(w, t3)
    return hub, store, w, sid, (t1.turn_id, t2.turn_id, t3.turn_id), request


def _stored(store, sid):
    return (
        copy.deepcopy(store.sessions[sid]),
        list(store.events[sid]),
        sorted((t.turn_id, t.state) for t in store.turns.values() if t.session_id == sid),
        sorted(r.request_id for r in store.requests.values() if r.session_id == sid),
    )


async def test_a_fork_holds_the_turns_and_events_up_to_the_turn_and_nothing_after() -> None:
    hub, store, _, sid, (t1, t2, t3), request = await _three_turns()
    before = _stored(store, sid)

    view = await hub.fork_session(OWNER, sid, t2)

    fork = view.session
    assert fork.session_id != sid and fork.owner == OWNER and fork.runtime == "shell"
    assert (fork.forked_from_session_id, fork.forked_from_turn_id) == (sid, t2)
    assert fork.turn_count == 2 and view.last_seq == len(store.events[fork.session_id])
    turns = sorted((t for t in store.turns.values() if t.session_id == fork.session_id), key=lambda t: t.ordinal)
    assert [(t.ordinal, t.input, t.state) for t in turns] == [
        (1, "one", TurnState.COMPLETED),
        (2, "two", TurnState.COMPLETED),
    ]
    assert not {t.turn_id for t in turns} & {t1, t2, t3}
    renamed = {t1: turns[0].turn_id, t2: turns[1].turn_id}
    # The source's events of turns 1 and 2, in order, renumbered 1..n; turn 3's input (stored
    # while turn 2 ran) is not among them.
    source = [e for e in store.events[sid] if e.turn_id in renamed]
    copied = store.events[fork.session_id]
    assert [e.seq for e in copied] == list(range(1, len(source) + 1))
    assert [(renamed[e.turn_id], e.kind) for e in source] == [(e.turn_id, e.kind) for e in copied]
    assert b"three" not in b"".join(e.body for e in copied)
    assert {(e.lease_epoch, e.worker_seq) for e in copied} == {(0, 0)}
    # The request of turn 1 is the fork's own, under a new id, and its events name that id.
    (fork_request,) = [r for r in store.requests.values() if r.session_id == fork.session_id]
    assert fork_request.request_id != request.request_id and fork_request.turn_id == renamed[t1]
    resolved = next(e for e in copied if e.kind == "request_resolved")
    assert fork_request.request_id.encode() in resolved.body and request.request_id.encode() not in resolved.body
    # The source is as it was.
    assert _stored(store, sid) == before


async def test_the_default_is_the_last_completed_turn() -> None:
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, w, sid, "one")
    await finish_turn(w, first)
    second = await run_turn(hub, w, sid, "two")
    await w.write(sid, second.lease_epoch, second.turn_id, "turn_failed")

    view = await hub.fork_session(OWNER, sid, "")

    assert (view.session.forked_from_turn_id, view.session.turn_count) == (first.turn_id, 1)
    # Naming the failed turn forks at it: any turn that ended can be forked.
    assert (await hub.fork_session(OWNER, sid, second.turn_id)).session.turn_count == 2


async def test_a_queued_or_running_turn_is_refused_and_nothing_is_stored() -> None:
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    running = await run_turn(hub, w, sid, "one")
    queued, _ = await hub.send_input(OWNER, sid, "two", "")
    sessions = set(store.sessions)

    for turn_id in (running.turn_id, queued.turn_id):
        with pytest.raises(errors.TurnNotEnded) as refused:
            await hub.fork_session(OWNER, sid, turn_id)
        assert refused.value.code == "FAILED_PRECONDITION" and turn_id in refused.value.message
    # Interrupting the queued turn ends it while the first still runs: forking at it would copy
    # a running turn, so it is refused too, naming the running one.
    await hub.interrupt_turn(OWNER, sid, queued.turn_id, "")
    with pytest.raises(errors.TurnNotEnded) as refused:
        await hub.fork_session(OWNER, sid, queued.turn_id)
    assert running.turn_id in refused.value.message
    with pytest.raises(errors.NoCompletedTurn) as none:
        await hub.fork_session(OWNER, sid, "")
    assert none.value.code == "FAILED_PRECONDITION"
    assert set(store.sessions) == sessions


async def test_unknown_turns_and_other_owners_find_nothing() -> None:
    hub, store, _, sid, (t1, _, _), _ = await _three_turns()
    other = await new_session(hub)
    with pytest.raises(errors.TurnNotFound):
        await hub.fork_session(OWNER, sid, "trn_nope")
    with pytest.raises(errors.TurnNotFound):
        await hub.fork_session(OWNER, other, t1)  # a turn of another session
    with pytest.raises(errors.SessionNotFound):
        await hub.fork_session(OTHER_OWNER, sid, t1)


async def test_the_forks_next_turn_resumes_from_the_copied_log_on_a_lease_of_its_own() -> None:
    hub, store, w, sid, (_, t2, _), _ = await _three_turns()
    fork = (await hub.fork_session(OWNER, sid, t2)).session.session_id
    copied = len(store.events[fork])

    offer = await run_turn(hub, w, fork, "four")

    # Offered while the input's commit is in flight: the last stored event is the copied log's.
    assert (offer.lease_epoch, offer.resume_required, offer.last_seq) == (1, True, copied)
    source = await hub.resume_source("w", fork, 1, OWNER)
    assert source.snapshot is None and source.upto >= copied + 1
    resumed = [e for page in [p async for p in hub.events_between(fork, 0, source.upto)] for e in page]
    assert [e.seq for e in resumed][:copied] == list(range(1, copied + 1))
    # The worker numbers its events from 1 under the fork's epoch 1: none is taken for a copy.
    result = await w.write(fork, 1, offer.turn_id, "output", "turn_completed")
    assert [e.kind for e in result.events] == ["output", "turn_completed"]
    assert (await hub.get_turn(OWNER, fork, offer.turn_id)).state == TurnState.COMPLETED
    assert (await hub.get_session(OWNER, fork)).session.turn_count == 3
