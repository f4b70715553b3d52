"""Scheduled deletions (stored, so a restarted hub still carries them out; cancelled ones are
not) and purging an owner in batches, which leaves other owners alone and keeps the doomed
sessions from loading while a batch is deleted."""

from __future__ import annotations

import asyncio

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain._deletions import PURGE_BATCH
from tether.control_plane.domain.messages import InterruptMsg, RevokeMsg

from .harness import OTHER_OWNER, OWNER, Worker, new_hub, new_session, run_turn, stop_wall_clock


async def test_a_scheduled_deletion_is_stored_shown_and_cancelled() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    view = await hub.schedule_deletion(OWNER, sid, 3600)
    assert view.session.delete_time_us > 0 and store.sessions[sid].delete_time_us == view.session.delete_time_us
    kept = await hub.cancel_deletion(OWNER, sid)
    assert kept.session.delete_time_us == 0 == store.sessions[sid].delete_time_us
    assert (await hub.cancel_deletion(OWNER, sid)).session.delete_time_us == 0  # none scheduled: as it is


@pytest.mark.parametrize("after_s", [0.0, -5.0, 0.5, 3651 * 86400.0])
async def test_a_delete_after_out_of_range_names_the_field_and_stores_nothing(after_s: float) -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    with pytest.raises(errors.InvalidArgument) as refused:
        await hub.schedule_deletion(OWNER, sid, after_s)
    assert refused.value.violations[0].field == "delete_after"
    assert store.sessions[sid].delete_time_us == 0


async def test_another_owner_cannot_schedule_or_cancel() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    with pytest.raises(errors.SessionNotFound):
        await hub.schedule_deletion(OTHER_OWNER, sid, 60)
    await hub.schedule_deletion(OWNER, sid, 60)
    with pytest.raises(errors.SessionNotFound):
        await hub.cancel_deletion(OTHER_OWNER, sid)
    assert store.sessions[sid].delete_time_us > 0


async def test_the_sweep_deletes_what_is_due_even_after_a_restart_and_spares_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = stop_wall_clock(monkeypatch)
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    due, running, cancelled, later = [await new_session(hub) for _ in range(4)]
    await run_turn(hub, w, running)
    for sid in (due, running, cancelled):
        await hub.schedule_deletion(OWNER, sid, 1)
    await hub.schedule_deletion(OWNER, later, 3600)
    await hub.cancel_deletion(OWNER, cancelled)
    w.inbox()

    clock.advance(1.05)
    restarted, _ = new_hub(store)  # the schedule is in the store, not only in memory
    assert await restarted.sweep_deletions() == 2
    assert due not in store.sessions and running not in store.sessions
    assert cancelled in store.sessions and later in store.sessions
    assert await restarted.sweep_deletions() == 0


async def test_a_swept_session_with_a_running_turn_tells_its_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = stop_wall_clock(monkeypatch)
    hub2, _ = new_hub()
    w2 = Worker(hub2, "w2")
    await w2.connect()
    sid = await new_session(hub2)
    offer = await run_turn(hub2, w2, sid)
    await hub2.schedule_deletion(OWNER, sid, 1)
    clock.advance(1.05)
    assert await hub2.sweep_deletions() == 1
    told = w2.inbox()
    assert any(isinstance(m, InterruptMsg) and m.turn_id == offer.turn_id for m in told)
    assert any(isinstance(m, RevokeMsg) and m.session_id == sid for m in told)
    with pytest.raises(errors.SessionNotFound):
        await hub2.get_session(OWNER, sid)


async def test_a_purge_deletes_one_owners_sessions_in_batches_and_nothing_else() -> None:
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    mine = [await new_session(hub) for _ in range(PURGE_BATCH * 2 + 5)]
    theirs = [await new_session(hub, OTHER_OWNER) for _ in range(3)]
    offer = await run_turn(hub, w, mine[0])
    w.inbox()

    progress = [n async for n in hub.purge_sessions(OWNER)]

    assert progress == [PURGE_BATCH, PURGE_BATCH * 2, PURGE_BATCH * 2 + 5]
    assert sorted(store.sessions) == sorted(theirs)
    assert not [t for t in store.turns.values() if t.session_id in mine]
    assert any(isinstance(m, RevokeMsg) and m.session_id == offer.session_id for m in w.inbox())
    for sid in mine[:3]:
        with pytest.raises(errors.SessionNotFound):
            await hub.get_session(OWNER, sid)
    assert [n async for n in hub.purge_sessions(OWNER)] == []  # nothing left: done at once


async def test_a_session_asked_for_while_its_batch_is_deleted_is_not_found() -> None:
    hub, store = new_hub()
    sids = [await new_session(hub) for _ in range(5)]
    hub.evict_idle(float("inf"))  # none loaded: the purge must keep them from loading
    purge = hub.purge_sessions(OWNER)
    first = asyncio.ensure_future(purge.__anext__())
    await asyncio.sleep(0)
    with pytest.raises(errors.SessionNotFound):
        await hub.get_session(OWNER, sids[0])
    assert await first == 5
    assert not store.sessions
    await purge.aclose()
