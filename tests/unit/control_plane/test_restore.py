"""RestoreSession: offered restore-only to another worker, granted when it accepts (the old
holder is revoked), confirmed by its snapshot at the new epoch; every failure on the way fails
the call, and a grant never confirmed frees the lease again."""

from __future__ import annotations

import asyncio

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import GrantMsg, OfferMsg, RevokeMsg

from .harness import OWNER, Worker, finish_turn, new_hub, new_session, run_turn, settle


async def _idle_session(**timings: float) -> tuple:
    """Session `sid`, idle, held warm by `old`; `new` is another connected worker."""
    hub, store = new_hub(**timings)
    old, new = Worker(hub, "old"), Worker(hub, "new")
    await old.connect()
    sid = await new_session(hub)
    first = await run_turn(hub, old, sid)
    await finish_turn(old, first)
    await new.connect()
    old.inbox()
    return hub, store, old, new, sid


async def _offered(hub, sid: str, new: Worker) -> tuple[asyncio.Task, OfferMsg]:
    call = asyncio.create_task(hub.restore_session(OWNER, sid, {}, ""))
    await settle()
    return call, new.offer()


async def test_offer_grant_and_snapshot_move_the_session() -> None:
    hub, store, old, new, sid = await _idle_session()
    call, offer = await _offered(hub, sid, new)
    assert (offer.restore_only, offer.turn_id, offer.lease_epoch, offer.resume_required) == (True, "", 2, True)

    await new.accept(offer)
    assert [type(m) for m in new.inbox()] == [GrantMsg]
    assert old.only(RevokeMsg) == [RevokeMsg(sid, 1, "restored onto another worker")]
    assert not call.done()  # granted, not yet confirmed

    await hub.store_snapshot("new", sid, 2, 2, '{"runtime_thread_id": "t-2"}', b"h", 1, "", OWNER)
    view = await asyncio.wait_for(call, 1)

    assert (view.worker_id, view.lease_epoch) == ("new", 2)
    assert store.leases[sid].worker_id == "new" and view.session.runtime_thread_id == "t-2"


async def test_a_turn_sent_during_a_restore_waits_for_it_then_runs_on_the_new_holder() -> None:
    hub, store, old, new, sid = await _idle_session()
    call, offer = await _offered(hub, sid, new)
    await new.accept(offer)
    new.inbox()

    await hub.send_input(OWNER, sid, "next", "")
    assert old.only(OfferMsg) == [] and new.only(OfferMsg) == []
    await hub.store_snapshot("new", sid, 2, 2, "{}", b"h", 1, "", OWNER)
    await asyncio.wait_for(call, 1)

    turn = new.offer()
    assert (turn.lease_epoch, turn.resume_required) == (2, False)


async def test_a_worker_that_declines_fails_the_restore_and_nothing_moves() -> None:
    hub, store, old, new, sid = await _idle_session()
    call, offer = await _offered(hub, sid, new)

    hub.reject("new", sid, "", "no disk")

    with pytest.raises(errors.NoWorker) as declined:
        await asyncio.wait_for(call, 1)
    assert "declined" in declined.value.message and "no disk" in declined.value.message
    assert (store.leases[sid].worker_id, store.leases[sid].epoch) == ("old", 1)
    statuses = {st.info.worker_id: st for st in hub.worker_statuses(OWNER)}
    assert statuses["new"].running_turns == 0  # the slot it held for the restore is free again


async def test_an_offer_not_accepted_in_time_fails_the_restore() -> None:
    hub, store, old, new, sid = await _idle_session(offer_timeout_s=0.02)
    call, offer = await _offered(hub, sid, new)

    with pytest.raises(errors.Timeout) as late:
        await asyncio.wait_for(call, 1)
    assert "did not accept" in late.value.message
    await new.accept(offer)  # too late: refused
    assert new.only(RevokeMsg) == [RevokeMsg(sid, 2, "the offer is no longer valid")]
    assert store.leases[sid].worker_id == "old"


async def test_a_grant_never_confirmed_fails_the_restore_and_frees_the_lease() -> None:
    hub, store, old, new, sid = await _idle_session(offer_timeout_s=0.02, snapshot_timeout_s=0.02)
    call, offer = await _offered(hub, sid, new)
    await new.accept(offer)

    with pytest.raises(errors.Timeout) as unconfirmed:
        await asyncio.wait_for(call, 1)
    assert "did not confirm" in unconfirmed.value.message
    await settle()
    lease = store.leases[sid]
    assert (lease.worker_id, lease.epoch) == ("", 2)  # free, so the next turn rehydrates anywhere


async def test_the_worker_going_away_before_accepting_fails_the_restore() -> None:
    hub, store, old, new, sid = await _idle_session()
    call, offer = await _offered(hub, sid, new)

    new.disconnect()

    with pytest.raises(errors.NoWorker) as gone:
        await asyncio.wait_for(call, 1)
    assert "went away" in gone.value.message


async def test_a_busy_session_or_one_without_another_worker_is_not_restored() -> None:
    hub, store = new_hub()
    only = Worker(hub, "only")
    await only.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, only, sid)
    with pytest.raises(errors.SessionBusy):
        await hub.restore_session(OWNER, sid, {}, "")
    await finish_turn(only, offer)
    with pytest.raises(errors.NoWorker):
        await hub.restore_session(OWNER, sid, {}, "")  # the holder is the only worker
    with pytest.raises(errors.InvalidArgument):
        await hub.restore_session(OWNER, sid, {}, "only")
