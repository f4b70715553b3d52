"""Retention: sessions idle past the policy's time are archived, then deleted; a session used
since (a turn, an event, a change) or with a turn open is left alone; an owner's override
replaces the default for that owner only."""

from __future__ import annotations

import dataclasses

import pytest

from tether.control_plane.domain.hub import Hub, Retention, RetentionPolicy

from ...helpers.fake_store import FakeCodec, MemoryStore
from .harness import OTHER_OWNER, OWNER, TIMINGS, new_session, stop_wall_clock


def _hub(retention: Retention) -> tuple[Hub, MemoryStore]:
    store = MemoryStore()
    return Hub(store, store, FakeCodec(), dataclasses.replace(TIMINGS), retention=retention), store


async def test_idle_sessions_are_archived_then_deleted_and_used_ones_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = stop_wall_clock(monkeypatch)
    hub, store = _hub(Retention(RetentionPolicy(archive_idle_s=0.3, delete_idle_s=0.8)))
    idle = await new_session(hub)
    used = await new_session(hub)
    busy = await new_session(hub)
    await hub.send_input(OWNER, busy, "waits for a worker", "")  # a turn open: never idle
    clock.advance(0.35)
    await hub.send_input(OWNER, used, "just now", "")
    await hub.interrupt_turn(OWNER, used, "", "")

    assert await hub.sweep_retention() == (1, 0)
    assert store.sessions[idle].archived and not store.sessions[used].archived and not store.sessions[busy].archived

    clock.advance(0.5)
    archived, deleted = await hub.sweep_retention()
    assert (archived, deleted) == (1, 1)  # `used` archived now; `idle` past the delete time
    assert idle not in store.sessions and store.sessions[used].archived
    assert busy in store.sessions and not store.sessions[busy].archived
    assert await hub.sweep_retention() == (0, 0)


async def test_an_owners_override_replaces_the_default_for_that_owner_only(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = stop_wall_clock(monkeypatch)
    retention = Retention(
        RetentionPolicy(archive_idle_s=0.2), by_owner=((OTHER_OWNER, RetentionPolicy(delete_idle_s=0.2)),)
    )
    hub, store = _hub(retention)
    mine = await new_session(hub)
    theirs = await new_session(hub, OTHER_OWNER)
    clock.advance(0.25)
    assert await hub.sweep_retention() == (1, 1)
    assert store.sessions[mine].archived and theirs not in store.sessions


async def test_retention_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = stop_wall_clock(monkeypatch)
    hub, store = _hub(Retention())
    sid = await new_session(hub)
    clock.advance(0.05)
    assert await hub.sweep_retention() == (0, 0)
    assert not store.sessions[sid].archived
