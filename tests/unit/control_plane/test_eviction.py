"""Bounded memory: a session that is not live leaves memory `session_idle_s` after its last use
and comes back from the store, unchanged, when next asked for. Live sessions (a turn open, a
lease held, a subscriber following) stay whatever their idle time."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.access import Limits
from tether.control_plane.domain.hub import Hub
from tether.control_plane.domain.messages import OfferMsg

from ...helpers.fake_store import FakeCodec, MemoryStore
from ...helpers.processes import eventually
from .harness import OWNER, TIMINGS, Worker, finish_turn, new_hub, new_session, run_turn, settle

IDLE_S = 60.0


def later() -> float:
    """A clock reading past the idle interval of everything used until now."""
    return time.monotonic() + IDLE_S + 1


async def test_an_idle_session_is_evicted_and_reloads_unchanged() -> None:
    hub, _ = new_hub(session_idle_s=IDLE_S)
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    await finish_turn(w1, offer)
    await hub.release("w1", sid, offer.lease_epoch, "done with it")
    before = await hub.get_session(OWNER, sid)

    assert hub.evict_idle() == 0  # just used: it stays
    assert hub.evict_idle(later()) == 1
    assert hub.loaded_sessions() == 0

    after = await hub.get_session(OWNER, sid)
    assert hub.loaded_sessions() == 1
    assert (after.last_seq, after.session.turn_count, after.lease_epoch, after.worker_id) == (
        before.last_seq,
        before.session.turn_count,
        before.lease_epoch,
        "",
    )
    # The reloaded session takes its next turn at the next epoch, numbered on from the log.
    turn, _ = await hub.send_input(OWNER, sid, "again", "")
    assert turn.ordinal == 2
    assert w1.offer().lease_epoch == offer.lease_epoch + 1


async def test_an_idempotency_key_still_answers_after_its_session_was_evicted() -> None:
    hub, _ = new_hub(session_idle_s=IDLE_S)
    sid = await new_session(hub)
    first, _ = await hub.send_input(OWNER, sid, "hello", "key-1")
    await hub.interrupt_turn(OWNER, sid, first.turn_id, "not now")
    assert hub.evict_idle(later()) == 1

    again, replayed = await hub.send_input(OWNER, sid, "hello", "key-1")
    assert replayed and again.turn_id == first.turn_id
    with pytest.raises(errors.IdempotencyKeyReused):
        await hub.send_input(OWNER, sid, "other input", "key-1")


async def test_live_sessions_stay_whatever_their_idle_time() -> None:
    hub, _ = new_hub(session_idle_s=IDLE_S)
    w1 = Worker(hub, "w1")
    await w1.connect()
    queued = await new_session(hub)  # a turn waits for a worker: w1 is busy
    held = await new_session(hub)  # its worker still holds the lease after the turn
    running = await new_session(hub)
    followed = await new_session(hub)  # a subscriber follows its log
    await new_session(hub)  # idle: nothing keeps it

    offer = await run_turn(hub, w1, held)
    await finish_turn(w1, offer)
    await run_turn(hub, w1, running)
    await hub.send_input(OWNER, queued, "waits", "")
    stream = await hub.subscribe(OWNER, followed, 0, False)
    follower = asyncio.ensure_future(anext(stream))
    await settle()

    assert hub.evict_idle(later()) == 1  # only `idle`
    assert hub.loaded_sessions() == 4
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    await stream.aclose()
    assert hub.evict_idle(later() + IDLE_S) == 1  # `followed`, once nobody follows it


async def test_an_evicted_session_s_lease_is_not_lost_to_its_worker() -> None:
    """A worker that still holds the lease renews it whether or not the session is loaded:
    a held lease keeps the session loaded, so renewals never find it missing."""
    hub, _ = new_hub(session_idle_s=IDLE_S)
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    await finish_turn(w1, offer)
    assert hub.evict_idle(later()) == 0
    renewed = hub.renew("w1", w1.registration_id, [(sid, offer.lease_epoch)])
    assert renewed.lost == []
    # The warm holder gets the next turn at the same epoch.
    await hub.send_input(OWNER, sid, "again", "")
    assert w1.offer().lease_epoch == offer.lease_epoch


async def test_owner_limits_count_only_busy_sessions_and_survive_eviction() -> None:
    store = MemoryStore()
    hub = Hub(
        store,
        store,
        FakeCodec(),
        dataclasses.replace(TIMINGS, session_idle_s=IDLE_S),
        Limits(max_active_sessions_per_owner=1),
    )
    a = await new_session(hub)
    b = await new_session(hub)
    first, _ = await hub.send_input(OWNER, a, "busy", "")
    assert hub.evict_idle(later()) == 1  # `b` goes; `a` has a queued turn
    with pytest.raises(errors.LimitExceeded):
        await hub.send_input(OWNER, b, "second", "")
    await hub.interrupt_turn(OWNER, a, first.turn_id, "")
    assert hub.evict_idle(later() + IDLE_S) == 2
    turn, _ = await hub.send_input(OWNER, b, "now", "")
    assert turn.ordinal == 1


async def test_the_evictor_runs_by_itself() -> None:
    hub, _ = new_hub(session_idle_s=0.2)
    await hub.start()
    try:
        await new_session(hub)
        await eventually(lambda: hub.loaded_sessions() == 0, timeout=5, what="the idle session's eviction")
    finally:
        await hub.stop()


async def test_a_worker_attaching_after_eviction_sees_only_its_held_leases() -> None:
    """Attach walks the worker's held leases: a worker that restarted and lost a session's
    runtime has that lease freed at once, idle sessions elsewhere are not touched."""
    hub, _ = new_hub(session_idle_s=IDLE_S)
    w1 = Worker(hub, "w1", slots=2)
    await w1.connect()
    kept = await new_session(hub)
    lost = await new_session(hub)
    offers: list[OfferMsg] = []
    for sid in (kept, lost):
        offer = await run_turn(hub, w1, sid)
        await finish_turn(w1, offer)
        offers.append(offer)
    w1.disconnect()
    await w1.connect(held=[(kept, offers[0].lease_epoch)])
    await settle()
    assert (await hub.get_session(OWNER, kept)).worker_id == "w1"
    assert (await hub.get_session(OWNER, lost)).worker_id == ""
    assert hub.evict_idle(later()) == 1  # `lost`, now free; `kept` is still held
