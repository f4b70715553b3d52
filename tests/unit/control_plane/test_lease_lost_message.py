"""The LEASE_LOST message says what happened to the lease, and never contradicts itself (it
once read "lease epoch 1 ... is no longer current (current epoch 1)" when another worker held
the lease at that very epoch)."""

from __future__ import annotations

import pytest

from tether.control_plane.domain import errors

from .harness import OWNER, Worker, finish_turn, new_hub, new_session, run_turn


async def test_a_write_by_a_worker_that_does_not_hold_the_epoch_says_another_worker_holds_it() -> None:
    hub, _ = new_hub()
    w1, w2 = Worker(hub, "w1"), Worker(hub, "w2")
    await w1.connect()
    await w2.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)

    with pytest.raises(errors.LeaseLost) as lost:
        hub.check_lease("w2", sid, offer.lease_epoch, OWNER)

    message = lost.value.message
    assert lost.value.metadata["current_epoch"] == str(offer.lease_epoch)  # the same epoch
    assert "no longer current" not in message
    assert f"lease epoch {offer.lease_epoch} of session {sid!r}" in message
    assert "released, or is held by another worker" in message


async def test_a_released_lease_says_it_was_released() -> None:
    hub, _ = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    await finish_turn(w1, offer)
    await hub.release("w1", sid, offer.lease_epoch, "idle")

    with pytest.raises(errors.LeaseLost) as lost:
        hub.check_lease("w1", sid, offer.lease_epoch, OWNER)
    assert lost.value.metadata["current_epoch"] == str(offer.lease_epoch)  # released at that epoch
    assert "no longer current" not in lost.value.message
    assert "the lease was released" in lost.value.message


@pytest.mark.parametrize(
    ("epoch", "current", "says"),
    [
        (1, 2, "superseded by epoch 2"),
        (3, 2, "never granted"),
        (1, 0, "no worker holds it"),
        (1, 1, "released, or is held by another worker"),
    ],
)
def test_each_case_reads_as_what_happened(epoch: int, current: int, says: str) -> None:
    message = errors.LeaseLost("ses_1", epoch, current).message
    assert says in message and "stop this session" in message
