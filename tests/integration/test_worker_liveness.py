"""The worker's liveness on its lease stream: the liveness timeout, dropping a deaf server and
reconnecting, and a cancel that lands as a lease write fails; against the scripted
control plane in tests/helpers/fake_control_plane.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.helpers.fake_control_plane import HEARTBEAT_S, LIVENESS_S, _connected, _duration, _run_turn
from tests.helpers.processes import eventually
from tether.execution_worker import WorkerSettings
from tether.execution_worker._backoff import Backoff
from tether.execution_worker._lease import LeaseTimings
from tether.v1 import worker_service_pb2 as wpb

# -- A: liveness ---------------------------------------------------------------------------------


def test_liveness_timeout_comes_from_register_else_three_heartbeats():
    fallback = LeaseTimings()
    with_liveness = wpb.RegisterResponse(heartbeat_interval=_duration(2), liveness_timeout=_duration(7))
    assert LeaseTimings.from_response(with_liveness, fallback).liveness_timeout_s == 7
    without = wpb.RegisterResponse(heartbeat_interval=_duration(2))
    assert LeaseTimings.from_response(without, fallback).liveness_timeout_s == 6
    # Not what an earlier registration said: 3 heartbeats of this one.
    earlier = LeaseTimings.from_response(with_liveness, fallback)
    assert LeaseTimings.from_response(without, earlier).liveness_timeout_s == 6


def test_the_reconnect_delay_stays_well_inside_the_lease_ttl():
    # A restarted control plane gives the leases it loads one TTL: a worker whose backoff had
    # grown past it while the control plane was down would come back to expired leases.
    fallback = LeaseTimings()
    short_ttl = wpb.RegisterResponse(lease_ttl=_duration(3), reconnect_backoff_max=_duration(5))
    assert LeaseTimings.from_response(short_ttl, fallback).reconnect_backoff_max_s == 0.75
    long_ttl = wpb.RegisterResponse(lease_ttl=_duration(60), reconnect_backoff_max=_duration(5))
    assert LeaseTimings.from_response(long_ttl, fallback).reconnect_backoff_max_s == 5
    timings = LeaseTimings.from_response(short_ttl, fallback)
    backoff = Backoff(timings.reconnect_backoff_initial_s, timings.reconnect_backoff_max_s)
    delays = [backoff.next_delay() for _ in range(20)]
    assert max(delays) <= 0.75, delays  # so at least four tries in every TTL


async def test_a_deaf_server_is_dropped_after_the_liveness_timeout_and_leases_are_kept(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    # Answered renewals keep the stream: no reconnect over several liveness timeouts.
    await asyncio.sleep(3 * LIVENESS_S)
    assert cp.streams == 1
    assert len(cp.lease_requests("renew", stream=1)) >= 5

    cp.answer_renewals = False
    silent_since = time.monotonic()
    await eventually(lambda: cp.streams >= 2, timeout=3, what="reconnect after silence")
    elapsed = time.monotonic() - silent_since
    assert LIVENESS_S - HEARTBEAT_S <= elapsed < LIVENESS_S + 0.6, elapsed
    # The worker heartbeated into the silence before giving up on it, ...
    assert any(r.renew.leases for r in cp.lease_requests("renew", stream=1))
    # ... and still holds the session: the new stream's LeaseOpen lists it.
    reopen = cp.lease_requests("open", stream=2)[0].open
    assert [(ref.session_id, ref.lease_epoch) for ref in reopen.leases] == [("ses_a", 1)]
    assert w.worker.session_ids == ["ses_a"]
    cp.answer_renewals = True
    await asyncio.sleep(3 * LIVENESS_S)
    assert cp.streams == 2


async def test_a_cancel_landing_as_a_lease_write_fails_is_not_swallowed(tmp_path):
    """The stream teardown cancels the heartbeat and then the call, which fails the heartbeat's
    write in the same loop iteration; the heartbeat must still end, or the Lease loop waits
    for it forever and never reconnects (asyncio.wait_for on 3.11 swallowed it)."""
    from tether.execution_worker._lease import LeaseClient

    write_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Call:
        async def write(self, request: Any) -> None:
            await write_done

    client = LeaseClient(
        stub=None,
        settings=WorkerSettings(workdir=tmp_path),
        worker_id="wkr_test",
        runtimes=["fake"],
        handler=None,  # type: ignore[arg-type]
    )
    client._call = Call()  # type: ignore[assignment]
    sending = asyncio.create_task(client.send(wpb.LeaseRequest(renew=wpb.RenewLeases())))
    await asyncio.sleep(0.01)
    write_done.set_exception(asyncio.InvalidStateError("RPC already finished"))
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending


# -- B: cheap renewals ---------------------------------------------------------------------------


def test_the_worker_digest_matches_the_contract_and_the_control_plane():
    """Worker and control plane implement LeaseDigest separately; both follow the proto text."""
    import hashlib

    from tether.control_plane.domain._workers import HeldLeases
    from tether.execution_worker._lease import lease_digest

    leases = [("ses_a", 1), ("ses_b", 7), ("ses_ü", 12)]
    expected = 0
    for sid, epoch in leases:
        expected ^= int.from_bytes(hashlib.sha256(f"{sid}/{epoch}".encode()).digest()[:8], "big")
    held = HeldLeases()
    for sid, epoch in leases:
        held.add(sid, epoch)
    digest = lease_digest([wpb.LeaseRef(session_id=s, lease_epoch=e) for s, e in leases])
    assert (digest.count, digest.xor) == (3, expected) == (len(held.epochs), held.digest)
    assert lease_digest([]).xor == 0


async def test_renewals_carry_a_digest_and_the_full_list_only_on_resync(fake_cp, start_worker):
    cp, target = fake_cp
    cp.lease_digests = True
    start_worker(target)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await asyncio.sleep(4 * HEARTBEAT_S)
    renewals = cp.lease_requests("renew", stream=1)
    last = renewals[-1].renew
    assert not last.leases and (last.held_digest.count, last.held_digest.xor) == (
        1,
        int.from_bytes(__import__("hashlib").sha256(b"ses_a/1").digest()[:8], "big"),
    )

    cp.resync_next = True
    before = len(cp.lease_requests("renew", stream=1))
    # The full list follows the resync at once, not a heartbeat later; then digests again.
    await eventually(
        lambda: any(r.renew.leases for r in cp.lease_requests("renew", stream=1)[before:]),
        timeout=3,
        what="a full renewal after resync",
    )
    full = next(r.renew for r in cp.lease_requests("renew", stream=1)[before:] if r.renew.leases)
    assert [(ref.session_id, ref.lease_epoch) for ref in full.leases] == [("ses_a", 1)]
    assert not full.HasField("held_digest")
    await asyncio.sleep(3 * HEARTBEAT_S)
    assert cp.lease_requests("renew", stream=1)[-1].renew.HasField("held_digest")


async def test_an_idle_worker_renews_every_idle_interval_and_a_busy_one_every_heartbeat(fake_cp, start_worker):
    cp, target = fake_cp
    idle_s = 10 * HEARTBEAT_S
    cp.idle_heartbeat_s = idle_s
    cp.liveness_s = 3 * idle_s  # the fake does not close silent streams; the worker must not call it deaf
    start_worker(target)
    await _connected(cp)
    await asyncio.sleep(3 * idle_s)
    idle_renewals = len(cp.lease_requests("renew", stream=1))
    assert 2 <= idle_renewals <= 4, idle_renewals  # about one per idle interval, not 30 heartbeats
    assert cp.streams == 1  # quiet is not deaf: no reconnect

    cp.auto_grant = True
    cp.offer("ses_a", "trn_1", "cmd trn_1")
    await eventually(lambda: cp.terminal_events("ses_a"), timeout=3, what="the turn to end")
    start = len(cp.lease_requests("renew", stream=1))
    await asyncio.sleep(idle_s)
    held_renewals = len(cp.lease_requests("renew", stream=1)) - start
    assert held_renewals >= 6, held_renewals  # holding a lease: every heartbeat
