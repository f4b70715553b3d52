"""The control plane ends what it started, whatever a worker or a restart does: a stop is not a
deletion, a worker cannot re-use an event number to say something else, and no turn waits
forever on a worker that does not end it."""

from __future__ import annotations

import asyncio

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import IncomingEvent, InterruptMsg, OfferMsg, RevokeMsg

from ...helpers.processes import eventually
from .harness import OWNER, Worker, new_hub, new_session, run_turn, settle


async def test_a_stop_ends_live_subscriptions_unavailable_not_not_found() -> None:
    hub, _ = new_hub()
    await hub.start()
    sid = await new_session(hub)
    stream = await hub.subscribe(OWNER, sid, 0, False)
    reading = asyncio.ensure_future(anext(stream))
    await settle()
    await hub.stop()
    with pytest.raises(errors.Unavailable, match="shutting down"):
        await asyncio.wait_for(reading, 2)
    # A stream opened on the stopping hub is refused the same way.
    late = await hub.subscribe(OWNER, sid, 0, False)
    with pytest.raises(errors.Unavailable):
        await anext(late)


async def test_a_reused_event_number_with_other_content_is_refused_and_counted() -> None:
    """A worker that restarts its numbering for its second turn in one lease must hear about it,
    not have the second turn's events acknowledged and dropped (the turn would never end)."""
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, w1, sid)  # turn_started is worker_seq 1
    await w1.write(sid, first.lease_epoch, first.turn_id, "agent_message", "turn_completed")  # 2, 3

    await hub.send_input(OWNER, sid, "again", "")
    second = w1.offer()
    await w1.accept(second)
    assert second.lease_epoch == first.lease_epoch
    before = store.kinds(sid)
    restarted = [IncomingEvent(1, second.turn_id, "turn_started", b"turn_started")]
    with pytest.raises(errors.WorkerSeqReused) as refused:
        hub.ingest("w1", sid, second.lease_epoch, restarted, OWNER)
    assert refused.value.code == "INVALID_ARGUMENT" and refused.value.reason == "WORKER_SEQ_REUSED"
    assert "continue at 4" in refused.value.message
    assert hub.reused_worker_seqs() == 1
    await settle()
    assert store.kinds(sid) == before  # nothing stored

    # A true resend (the same event under the same number) is still dropped quietly.
    resent = hub.ingest(
        "w1", sid, first.lease_epoch, [IncomingEvent(2, first.turn_id, "agent_message", b"agent_message")], OWNER
    )
    assert resent.committed is None and resent.events == []
    assert hub.reused_worker_seqs() == 1


async def test_a_reused_number_is_caught_past_the_events_kept_in_memory() -> None:
    hub, _ = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, w1, sid)
    await w1.write(sid, first.lease_epoch, first.turn_id, "turn_completed")
    await hub.send_input(OWNER, sid, "again", "")
    second = w1.offer()
    await w1.accept(second)
    rec = hub._sessions.get(sid)
    assert rec is not None
    rec.log.recent.clear()  # as if the first turn's events had long left memory
    with pytest.raises(errors.WorkerSeqReused, match="used by turn"):
        hub.ingest("w1", sid, second.lease_epoch, [IncomingEvent(2, second.turn_id, "turn_started", b"x")], OWNER)


async def test_interrupting_a_session_with_no_turn_says_so_with_its_own_reason() -> None:
    hub, _ = new_hub()
    sid = await new_session(hub)
    with pytest.raises(errors.NoActiveTurn, match="no queued or running turn") as no_turn:
        await hub.interrupt_turn(OWNER, sid, "", "stop")
    assert no_turn.value.reason == "NO_ACTIVE_TURN" and no_turn.value.code == "FAILED_PRECONDITION"


async def test_rejecting_a_repeat_offer_of_a_turn_already_accepted_changes_nothing() -> None:
    """A worker paused past the offer timeout gets the same turn offered again; it accepts the
    first offer and rejects the repeat. The running turn must not go back on the queue."""
    hub, store = new_hub(offer_timeout_s=0.05)
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    await hub.send_input(OWNER, sid, "sleep 2", "")
    first = w1.offer()
    repeats: list[OfferMsg] = []
    while not repeats:  # the offer expires and the same turn is offered to w1 again
        await asyncio.sleep(0.06)
        repeats = w1.only(OfferMsg)
    assert {(r.turn_id, r.lease_epoch) for r in repeats} == {(first.turn_id, first.lease_epoch)}
    repeat = repeats[-1]

    await w1.accept(first)
    hub.reject("w1", sid, repeat.turn_id, "already running it")
    await w1.write(sid, first.lease_epoch, first.turn_id, "turn_started")
    view = await hub.get_session(OWNER, sid)
    assert view.active_turn_id == first.turn_id

    await hub.send_input(OWNER, sid, "next", "")
    await w1.write(sid, first.lease_epoch, first.turn_id, "turn_completed")
    await settle()
    nxt = w1.offer()  # the next turn is offered, not the finished one again
    assert nxt.turn_id != first.turn_id
    assert (await hub.get_turn(OWNER, sid, first.turn_id)).state.name == "COMPLETED"
    assert store.kinds(sid).count("turn_completed") == 1


async def test_an_interrupt_the_worker_ignores_ends_the_turn_after_the_grace_and_takes_the_lease() -> None:
    hub, store = new_hub(interrupt_grace_s=0.1)
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    asked = await hub.interrupt_turn(OWNER, sid, offer.turn_id, "user pressed stop")
    assert asked.state.name == "RUNNING" and asked.interrupt_time_us > 0
    assert [m.reason for m in w1.only(InterruptMsg)] == ["user pressed stop"]

    await eventually(lambda: store.kinds(sid)[-1] == "turn_interrupted", timeout=3)
    turn = await hub.get_turn(OWNER, sid, offer.turn_id)
    assert turn.state.name == "INTERRUPTED"
    assert "user pressed stop" in turn.error_message and "0.1s interrupt grace" in turn.error_message
    assert [m.session_id for m in w1.only(RevokeMsg)] == [sid]
    assert hub.forced_turn_ends() == 1
    with pytest.raises(errors.LeaseLost):  # the worker's late writes are refused
        w1.ingest(sid, offer.lease_epoch, offer.turn_id, "turn_interrupted")
    # The session takes its next turn at once, at the next epoch.
    await hub.send_input(OWNER, sid, "next", "")
    assert w1.offer().lease_epoch == offer.lease_epoch + 1


async def test_an_interrupt_honoured_within_the_grace_is_left_to_the_worker() -> None:
    hub, store = new_hub(interrupt_grace_s=0.2)
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    await hub.interrupt_turn(OWNER, sid, offer.turn_id, "stop")
    await w1.write(sid, offer.lease_epoch, offer.turn_id, "turn_interrupted")
    await asyncio.sleep(0.4)
    assert store.kinds(sid).count("turn_interrupted") == 1
    assert hub.forced_turn_ends() == 0
    assert not w1.only(RevokeMsg)


async def test_a_turn_past_the_maximum_duration_is_interrupted_then_ended() -> None:
    hub, store = new_hub(max_turn_s=0.1, interrupt_grace_s=0.1)
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    await eventually(lambda: store.kinds(sid)[-1] == "turn_interrupted", timeout=3)
    (interrupt,) = w1.only(InterruptMsg)
    assert "maximum turn duration of 0.1s" in interrupt.reason
    turn = await hub.get_turn(OWNER, sid, offer.turn_id)
    assert turn.state.name == "INTERRUPTED" and "maximum turn duration" in turn.error_message


async def test_no_maximum_turn_duration_by_default() -> None:
    hub, store = new_hub(interrupt_grace_s=0.05)
    assert hub.timings.max_turn_s == 0
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    await run_turn(hub, w1, sid)
    await asyncio.sleep(0.3)
    assert store.kinds(sid)[-1] == "turn_started" and not w1.only(InterruptMsg)


async def test_a_turn_no_worker_can_take_says_why_as_a_field_and_an_event() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1", runtimes=["shell"])
    await w1.connect()
    view = await hub.create_session(OWNER, "nosuchruntime", {}, {})
    sid = view.session.session_id
    turn, _ = await hub.send_input(OWNER, sid, "hello", "")
    await settle()
    why = "no connected worker offers runtime 'nosuchruntime'"
    assert (await hub.get_turn(OWNER, sid, turn.turn_id)).waiting_reason == why
    assert (await hub.get_session(OWNER, sid)).waiting_reason == why
    assert store.kinds(sid) == ["input_received", "turn_waiting"]
    assert store.events[sid][-1].body == f"turn_waiting:{why}".encode()

    await hub.send_input(OWNER, sid, "and this", "")  # dispatching again: the same reason is not written again
    await settle()
    assert store.kinds(sid) == ["input_received", "turn_waiting", "input_received"]

    w2 = Worker(hub, "w2", runtimes=["nosuchruntime"])  # a worker that can take it connects
    await w2.connect()
    offer = w2.offer()
    assert offer.turn_id == turn.turn_id
    assert (await hub.get_session(OWNER, sid)).waiting_reason == ""


async def test_labels_and_draining_are_named_as_the_reason() -> None:
    hub, _ = new_hub()
    w1 = Worker(hub, "w1", labels={"gpu": "no"})
    await w1.connect()
    view = await hub.create_session(OWNER, "shell", {"gpu": "yes"}, {})
    turn, _ = await hub.send_input(OWNER, view.session.session_id, "x", "")
    got = await hub.get_turn(OWNER, view.session.session_id, turn.turn_id)
    assert got.waiting_reason == "no connected worker offering runtime 'shell' has the labels gpu=yes"


async def test_a_queue_timeout_fails_a_turn_no_worker_can_take_no_worker() -> None:
    hub, store = new_hub(queue_timeout_s=0.1)
    await hub.start()  # the sweeper re-tries waiting sessions
    try:
        view = await hub.create_session(OWNER, "nosuchruntime", {}, {})
        sid = view.session.session_id
        turn, _ = await hub.send_input(OWNER, sid, "hello", "")
        await eventually(lambda: store.kinds(sid)[-1] == "turn_failed", timeout=5)
        failed = await hub.get_turn(OWNER, sid, turn.turn_id)
        assert failed.state.name == "FAILED"
        assert failed.error_message.startswith("NO_WORKER: no connected worker offers runtime 'nosuchruntime'")
        assert (await hub.get_session(OWNER, sid)).state.name == "IDLE"
    finally:
        await hub.stop()


async def test_a_turn_says_it_waits_only_once_the_reason_has_held_for_the_notice() -> None:
    """A worker still connecting (or reconnecting after a restart) makes no turn announce a
    wait; a reason that holds past the notice is said, once."""
    hub, store = new_hub(waiting_notice_s=0.3)
    await hub.start()  # the sweeper re-tries waiting sessions
    try:
        first = (await hub.create_session(OWNER, "shell", {}, {})).session.session_id
        turn, _ = await hub.send_input(OWNER, first, "x", "")
        await settle()
        assert (await hub.get_turn(OWNER, first, turn.turn_id)).waiting_reason == ""
        w1 = Worker(hub, "w1")
        await w1.connect()
        assert w1.offer().turn_id == turn.turn_id
        assert store.kinds(first) == ["input_received"]

        second = (await hub.create_session(OWNER, "nosuchruntime", {}, {})).session.session_id
        waiting, _ = await hub.send_input(OWNER, second, "y", "")
        await settle()
        assert store.kinds(second) == ["input_received"]
        assert (await hub.get_session(OWNER, second)).waiting_reason == ""
        await eventually(lambda: store.kinds(second) == ["input_received", "turn_waiting"], timeout=5)
        why = "no connected worker offers runtime 'nosuchruntime'"
        assert (await hub.get_turn(OWNER, second, waiting.turn_id)).waiting_reason == why
        await asyncio.sleep(1.5)  # later sweeper passes find the same reason: nothing more is said
        assert store.kinds(second) == ["input_received", "turn_waiting"]
    finally:
        await hub.stop()


async def test_a_worker_restarted_within_the_grace_runs_the_turn_queued_for_it() -> None:
    """SIGKILL the holder, send the session a turn, restart the worker (same id, nothing held)
    before the worker-dead grace ends: the turn must run there at the next epoch, rehydrated,
    not be offered at the old epoch and then lost with the old lease."""
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, w1, sid)
    await w1.write(sid, first.lease_epoch, first.turn_id, "turn_completed")
    w1.disconnect()  # killed: the grace (30 s here) starts
    turn, _ = await hub.send_input(OWNER, sid, "again", "")
    await settle()

    restarted = Worker(hub, "w1")  # the new process: same id, holds nothing
    lost = await restarted.connect()
    assert lost == []
    await settle()
    offer = restarted.offer()
    assert (offer.turn_id, offer.lease_epoch, offer.resume_required) == (turn.turn_id, first.lease_epoch + 1, True)
    await restarted.accept(offer)
    await settle()
    assert not restarted.only(RevokeMsg)
    await restarted.write(sid, offer.lease_epoch, offer.turn_id, "turn_started", "turn_completed")
    assert (await hub.get_turn(OWNER, sid, turn.turn_id)).state.name == "COMPLETED"
    assert "turn_failed" not in store.kinds(sid)


async def test_archiving_a_session_with_a_turn_queued_or_running_is_refused_busy() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    with pytest.raises(errors.SessionBusy, match="interrupt it or wait") as busy:
        await hub.archive_session(OWNER, sid)
    assert busy.value.metadata["turn_id"] == offer.turn_id
    assert not store.sessions[sid].archived
    await w1.write(sid, offer.lease_epoch, offer.turn_id, "turn_completed")
    assert (await hub.archive_session(OWNER, sid)).state.name == "ARCHIVED"
