"""Event compaction: old events drop only up to the newest snapshot's watermark, and never from
the first event of a turn that was still open at the snapshot (a resuming worker reads its input
from the log); a cursor below the kept log is CURSOR_EXPIRED, one at its edge reads on."""

from __future__ import annotations

import dataclasses

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.hub import Hub, Retention, RetentionPolicy

from ...helpers.fake_store import FakeCodec, MemoryStore
from .harness import OWNER, TIMINGS, Worker, finish_turn, new_session, run_turn, stop_wall_clock


def _hub() -> tuple[Hub, MemoryStore]:
    store = MemoryStore()
    retention = Retention(RetentionPolicy(compact_events_after_s=0.05))
    return Hub(store, store, FakeCodec(), dataclasses.replace(TIMINGS), retention=retention), store


async def test_compaction_stops_at_a_turn_open_at_the_snapshot_and_old_cursors_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = stop_wall_clock(monkeypatch)
    hub, store = _hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    for text in ("one", "two"):
        await finish_turn(w, await run_turn(hub, w, sid, text))
    running = await run_turn(hub, w, sid, "three")  # open when the snapshot is taken
    watermark = store.events[sid][-1].seq
    await hub.store_snapshot(w.worker_id, sid, running.lease_epoch, watermark, "{}", b"", 0, "", OWNER)
    three_first = store.turns[running.turn_id].first_seq
    clock.advance(0.1)

    assert await hub.sweep_retention() == (0, 0)
    assert store.sessions[sid].compacted_seq == three_first - 1 < watermark
    assert store.events[sid][0].seq == three_first and store.events[sid][0].kind == "input_received"

    with pytest.raises(errors.CursorExpired) as expired:
        await hub.subscribe(OWNER, sid, 0, True)
    assert expired.value.metadata["oldest_seq"] == str(three_first)
    kept = [e async for batch in await hub.subscribe(OWNER, sid, three_first - 1, True) for e in batch]
    assert [e.seq for e in kept][0] == three_first

    # Once turn three ends and a later snapshot covers it, the rest of what is old goes too.
    await finish_turn(w, running)
    end = store.events[sid][-1].seq
    await hub.store_snapshot(w.worker_id, sid, running.lease_epoch, end, "{}", b"", 0, "", OWNER)
    clock.advance(0.1)
    await hub.sweep_retention()
    assert store.sessions[sid].compacted_seq == end and store.events[sid] == []


async def test_nothing_is_compacted_without_a_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = stop_wall_clock(monkeypatch)
    hub, store = _hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    await finish_turn(w, await run_turn(hub, w, sid, "one"))
    clock.advance(0.1)
    await hub.sweep_retention()
    assert store.sessions[sid].compacted_seq == 0 and store.events[sid][0].seq == 1
