"""Recovery: after a failed write, the hub drops what it decided in memory and rebuilds from
what is durable, as after a restart; workers are told to reconnect."""

from __future__ import annotations

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import CloseMsg

from .harness import OWNER, Worker, finish_turn, new_hub, new_session, run_turn, settle


async def test_a_failed_write_is_unavailable_and_memory_is_rebuilt_from_the_store() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    await finish_turn(w1, offer)
    w1.inbox()
    durable = store.events[sid][-1].seq

    store.fail_next = 1
    with pytest.raises(errors.Unavailable):
        await hub.send_input(OWNER, sid, "lost", "")
    await settle()

    assert w1.only(CloseMsg) == [CloseMsg("the control plane is recovering from a failed write; reconnect")]
    view = await hub.get_session(OWNER, sid)
    assert (view.last_seq, view.session.turn_count) == (durable, 1)  # the lost turn left no trace
    turn, _ = await hub.send_input(OWNER, sid, "again", "")
    assert turn.ordinal == 2 and store.events[sid][-1].seq == durable + 1


async def test_a_restarted_hub_reloads_queued_turns_and_offers_them_when_a_worker_attaches() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    queued, _ = await hub.send_input(OWNER, sid, "waiting", "")

    restarted, _ = new_hub(store)
    await restarted.start()
    try:
        w1 = Worker(restarted, "w1")
        await w1.connect()
        assert w1.offer().turn_id == queued.turn_id
    finally:
        await restarted.stop()
