"""Idempotency keys: the same key with the same input is the same turn; with other input, an
error; a key survives a restart of the control plane."""

from __future__ import annotations

import pytest

from tether.control_plane.domain import errors

from .harness import OWNER, new_hub, new_session


async def test_the_same_key_and_input_return_the_first_turn_and_queue_nothing_more() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)

    first, first_dedup = await hub.send_input(OWNER, sid, "build it", "key-1")
    again, again_dedup = await hub.send_input(OWNER, sid, "build it", "key-1")

    assert (first_dedup, again_dedup) == (False, True)
    assert again.turn_id == first.turn_id
    assert [t.turn_id for t in store.turns.values()] == [first.turn_id]
    assert store.kinds(sid) == ["input_received", "turn_waiting"]  # one input; no worker offers shell
    assert (await hub.get_session(OWNER, sid)).session.turn_count == 1


async def test_the_same_key_with_other_input_is_refused() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    first, _ = await hub.send_input(OWNER, sid, "build it", "key-1")

    with pytest.raises(errors.IdempotencyKeyReused) as reused:
        await hub.send_input(OWNER, sid, "build something else", "key-1")

    assert reused.value.metadata["turn_id"] == first.turn_id
    assert len(store.turns) == 1 and store.kinds(sid) == ["input_received", "turn_waiting"]


async def test_a_key_is_found_in_the_store_after_a_restart() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    first, _ = await hub.send_input(OWNER, sid, "build it", "key-1")
    await hub.interrupt_turn(OWNER, sid, first.turn_id, "changed my mind")  # ended: gone from memory

    restarted, _ = new_hub(store)
    again, dedup = await restarted.send_input(OWNER, sid, "build it", "key-1")
    assert dedup and again.turn_id == first.turn_id
    with pytest.raises(errors.IdempotencyKeyReused):
        await restarted.send_input(OWNER, sid, "other", "key-1")
    assert len(store.turns) == 1


async def test_without_a_key_every_input_is_a_new_turn() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    a, _ = await hub.send_input(OWNER, sid, "same", "")
    b, _ = await hub.send_input(OWNER, sid, "same", "")
    assert a.turn_id != b.turn_id and (a.ordinal, b.ordinal) == (1, 2)
    assert len(store.turns) == 2
