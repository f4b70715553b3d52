"""Lease renewals by digest: a worker names its leases by count and XOR digest instead of listing
them; the hub renews them all when the digest matches what it has the worker holding, and asks
for the list (resync) when it does not, renewing nothing."""

from __future__ import annotations

import asyncio
import hashlib

from .harness import OWNER, Worker, finish_turn, new_hub, new_session, run_turn


def digest(*leases: tuple[str, int]) -> tuple[int, int]:
    """The LeaseDigest of worker_service.proto, computed from its definition."""
    xor = 0
    for session_id, epoch in leases:
        xor ^= int.from_bytes(hashlib.sha256(f"{session_id}/{epoch}".encode()).digest()[:8], "big")
    return len(leases), xor


async def test_a_matching_digest_renews_every_held_lease_and_a_stale_one_renews_none() -> None:
    hub, _ = new_hub(lease_ttl_s=0.4)
    await hub.start()  # the lease sweeper
    try:
        w1 = Worker(hub, "w1", slots=2)
        await w1.connect()
        a, b = await new_session(hub), await new_session(hub)
        held = []
        for sid in (a, b):
            offer = await run_turn(hub, w1, sid)
            await finish_turn(w1, offer)
            held.append((sid, offer.lease_epoch))

        for _ in range(8):  # twice the TTL, renewed by digest alone
            renewed = hub.renew("w1", w1.registration_id, [], digest(*held))
            assert not renewed.resync and renewed.lost == []
            await asyncio.sleep(0.1)
        assert [(await hub.get_session(OWNER, sid)).worker_id for sid in (a, b)] == ["w1", "w1"]

        stale = digest(held[0])  # the worker forgot `b`: the digest no longer matches
        for _ in range(8):
            renewed = hub.renew("w1", w1.registration_id, [], stale)
            assert renewed.resync
            await asyncio.sleep(0.1)
        assert [(await hub.get_session(OWNER, sid)).worker_id for sid in (a, b)] == ["", ""]
    finally:
        await hub.stop()


async def test_the_digest_follows_leases_as_they_come_and_go() -> None:
    hub, _ = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    assert not hub.renew("w1", w1.registration_id, [], digest()).resync  # nothing held yet
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    await finish_turn(w1, offer)
    assert hub.renew("w1", w1.registration_id, [], digest()).resync
    assert not hub.renew("w1", w1.registration_id, [], digest((sid, offer.lease_epoch))).resync
    assert hub.renew("w1", w1.registration_id, [], digest((sid, offer.lease_epoch + 1))).resync
    await hub.release("w1", sid, offer.lease_epoch, "done")
    assert not hub.renew("w1", w1.registration_id, [], digest()).resync
    assert hub.worker_idle("w1")
