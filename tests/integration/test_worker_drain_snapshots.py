"""The worker's drain (order, reasons, once per stream, a second SIGTERM) and its snapshot policy
(after each acked turn, every N turns, on request, a lost lease); against the scripted
control plane in tests/helpers/fake_control_plane.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import grpc
import pytest

from tests.helpers.fake_control_plane import HEARTBEAT_S, LIVENESS_S, _connected, _run_turn
from tests.helpers.processes import ROOT, eventually
from tether.v1 import resources_pb2 as rpb
from tether.v1 import worker_service_pb2 as wpb

# -- B: drain ------------------------------------------------------------------------------------


async def test_drain_announces_then_snapshots_then_releases_with_a_reason(fake_cp, start_worker):
    cp, target = fake_cp
    # No after-turn snapshots: the one below is the drain's own.
    w = start_worker(target, snapshot_every_turns=0, drain_grace_s=4.0)
    await _connected(cp)
    await _run_turn(cp, "ses_idle", "trn_0")
    w.registry.gate.clear()
    cp.offer("ses_busy", "trn_1", "long")
    await eventually(lambda: w.worker.running_turn_count == 1, timeout=3, what="turn running")

    before = time.time()
    w.worker.request_drain()
    await eventually(lambda: cp.lease_requests("draining"), timeout=3, what="DrainStarted")
    deadline = cp.lease_requests("draining")[0].draining.deadline.ToDatetime().timestamp()
    assert before + 3.5 <= deadline <= time.time() + 4.5
    # Draining: a new offer is declined, the running turn goes on.
    cp.offer("ses_new", "trn_2", "x")
    cp.offer("ses_moved", epoch=2, restore_only=True, resume_required=True)
    await eventually(lambda: len(cp.lease_requests("reject")) == 2, timeout=3, what="rejects while draining")
    assert [r.reject.reason for r in cp.lease_requests("reject")] == ["worker draining"] * 2
    assert not cp.snapshots() and not cp.lease_requests("release")

    w.registry.gate.set()  # the running turn finishes; then the drain completes
    await asyncio.wait_for(w.task, 5)
    assert [e.turn_id for e in cp.terminal_events("ses_busy")] == ["trn_1"]
    releases = cp.lease_requests("release")
    assert sorted(r.release.session_id for r in releases) == ["ses_busy", "ses_idle"]
    assert {r.release.reason for r in releases} == {"worker drained"}
    assert all(r.release.lease_epoch == 1 for r in releases)
    snapshots = {h.session_id: (h, items) for h, items in cp.snapshots()}
    assert set(snapshots) == {"ses_busy", "ses_idle"}
    for session_id, (header, items) in snapshots.items():
        assert header.request_id == "" and header.lease_epoch == 1
        assert header.seq == cp.last_seq[session_id]  # covers every event of the session
        assert [i.role for i in items] == [rpb.HISTORY_ITEM_ROLE_INPUT, rpb.HISTORY_ITEM_ROLE_OUTPUT]
    # Per session: DrainStarted, then its snapshot, then its release.
    for session_id in ("ses_busy", "ses_idle"):
        names = []
        for entry in cp.log:
            if entry[0] == "lease" and entry[2].WhichOneof("kind") == "draining":
                names.append("draining")
            elif entry[0] == "snapshot" and entry[1].session_id == session_id:
                names.append("snapshot")
            elif (
                entry[0] == "lease"
                and entry[2].WhichOneof("kind") == "release"
                and entry[2].release.session_id == session_id
            ):
                names.append("release")
        assert names == ["draining", "snapshot", "release"], (session_id, names)


async def test_a_drained_worker_waits_for_the_server_to_end_the_stream(fake_cp, start_worker):
    """Closing the channel right after the last ReleaseLease could cancel the call before the
    server handled it; the worker half-closes and waits for the server to end the stream."""
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    cp.end_gate.clear()
    w.worker.request_drain()
    await eventually(lambda: cp.half_closed == 1, timeout=3, what="half-close")
    assert [r.release.reason for r in cp.lease_requests("release")] == ["worker drained"]
    await asyncio.sleep(2 * LIVENESS_S)
    assert not w.task.done() and cp.streams == 1  # waiting, and not reconnecting
    cp.end_gate.set()
    await asyncio.wait_for(w.task, 3)
    assert cp.streams == 1


async def test_drain_started_is_sent_once_per_stream_and_again_after_a_reconnect(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, drain_grace_s=4.0)
    await _connected(cp)
    w.registry.gate.clear()
    cp.offer("ses_a", "trn_1", "long")
    await eventually(lambda: w.worker.running_turn_count == 1, timeout=3, what="turn running")
    w.worker.request_drain()
    w.worker.request_drain(3.0)  # a second request moves the deadline closer, sends nothing
    await eventually(lambda: cp.lease_requests("draining", stream=1), timeout=3, what="DrainStarted")
    await asyncio.sleep(2 * HEARTBEAT_S)
    assert len(cp.lease_requests("draining", stream=1)) == 1

    cp.drop_stream()
    await _connected(cp, 2)
    await eventually(lambda: cp.lease_requests("draining", stream=2), timeout=3, what="DrainStarted again")
    # On the new stream it is the first thing said after LeaseOpen.
    assert [r.WhichOneof("kind") for r in cp.lease_requests(stream=2)][:2] == ["open", "draining"]
    await asyncio.sleep(2 * HEARTBEAT_S)
    assert len(cp.lease_requests("draining", stream=2)) == 1
    w.registry.gate.set()
    await asyncio.wait_for(w.task, 5)
    assert [r.release.reason for r in cp.lease_requests("release", stream=2)] == ["worker drained"]


async def test_drain_requested_by_the_server_drains(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    cp.push(wpb.LeaseResponse(drain=wpb.DrainRequested()))
    await asyncio.wait_for(w.task, 5)
    assert cp.order()[-3:] == ["draining", "snapshot", "release"]


async def test_drain_skips_a_snapshot_the_after_turn_policy_already_stored(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)  # snapshot after every turn
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: cp.snapshots(), timeout=3, what="after-turn snapshot")
    w.worker.request_drain()
    await asyncio.wait_for(w.task, 5)
    assert len(cp.snapshots()) == 1
    assert [r.release.reason for r in cp.lease_requests("release")] == ["worker drained"]


async def test_a_second_sigterm_stops_a_draining_worker_at_once(fake_cp, tmp_path):
    cp, target = fake_cp
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.execution_worker",
        "--control-plane",
        target,
        "--runtime",
        "shell",
        "--workdir",
        str(tmp_path / "w"),
        "--slots",
        "1",
        "--drain-grace-s",
        "30",
        "--log-level",
        "WARNING",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: cp.streams and cp._out is not None, timeout=10, what="worker process connected")
        cp.offer("ses_a", "trn_1", "sleep 30", runtime="shell")
        await eventually(lambda: any(sid == "ses_a" for sid, _ in cp.stored), timeout=3, what="turn started")
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: cp.lease_requests("draining"), timeout=3, what="DrainStarted")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 3) == 128 + signal.SIGTERM
        assert not cp.lease_requests("release")  # stopped, not drained: the lease just expires
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- C: snapshot policy --------------------------------------------------------------------------


async def test_a_snapshot_follows_each_turn_once_its_events_are_acked(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: cp.snapshots(), timeout=3, what="after-turn snapshot")
    header, items = cp.snapshots()[0]
    assert (header.session_id, header.lease_epoch, header.request_id) == ("ses_a", 1, "")
    assert header.seq == cp.last_seq["ses_a"] == 3  # turn_started, output, turn_completed
    assert [(i.role, i.text) for i in items] == [
        (rpb.HISTORY_ITEM_ROLE_INPUT, "cmd trn_1"),
        (rpb.HISTORY_ITEM_ROLE_OUTPUT, "ran cmd trn_1\n"),
    ]
    assert json.loads(header.runtime_metadata_json) == {"runtime": "fake"}
    await _run_turn(cp, "ses_a", "trn_2")
    await eventually(lambda: len(cp.snapshots()) == 2, timeout=3, what="second snapshot")
    assert cp.snapshots()[1][0].seq == 6 and len(cp.snapshots()[1][1]) == 4
    assert w.worker.session_ids == ["ses_a"]


async def test_an_upload_never_holds_up_the_next_turn(fake_cp, start_worker):
    cp, target = fake_cp
    start_worker(target)
    await _connected(cp)
    cp.snapshot_gate.clear()  # the control plane sits on every snapshot
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: cp.snapshots(), timeout=3, what="upload started")
    await _run_turn(cp, "ses_a", "trn_2")  # runs and ends while the upload hangs
    cp.snapshot_gate.set()
    await eventually(lambda: len(cp.snapshots()) == 2, timeout=3, what="second snapshot")
    # The first upload was captured at the end of trn_1 and is unaffected by trn_2.
    (first, first_items), (second, second_items) = cp.snapshots()
    assert (first.seq, len(first_items)) == (3, 2)
    assert (second.seq, len(second_items)) == (6, 4)


async def test_a_turn_that_starts_before_the_acks_makes_the_next_turn_end_cover_it(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    cp.ack_gate.clear()  # trn_1's events are held unacknowledged
    cp.offer("ses_a", "trn_1", "one")
    await eventually(
        lambda: len(w.registry.turns) == 1 and w.worker.running_turn_count == 0, timeout=3, what="trn_1 ran"
    )
    w.registry.gate.clear()
    cp.offer("ses_a", "trn_2", "two")
    await eventually(lambda: w.worker.running_turn_count == 1, timeout=3, what="trn_2 running")
    cp.ack_gate.set()
    await eventually(lambda: cp.terminal_events("ses_a"), timeout=3, what="trn_1 stored")
    await asyncio.sleep(0.2)
    assert not cp.snapshots()  # trn_1's snapshot was skipped: trn_2 had started
    w.registry.gate.set()
    await eventually(lambda: cp.snapshots(), timeout=3, what="snapshot after trn_2")
    await asyncio.sleep(0.1)
    [(header, items)] = cp.snapshots()
    assert header.seq == cp.last_seq["ses_a"] == 6 and len(items) == 4


@pytest.mark.parametrize(("every", "turns", "expected"), [(0, 3, 0), (2, 1, 0), (2, 2, 1), (2, 3, 1)])
async def test_snapshot_every_turns(fake_cp, start_worker, every, turns, expected):
    cp, target = fake_cp
    start_worker(target, snapshot_every_turns=every)
    await _connected(cp)
    for n in range(turns):
        await _run_turn(cp, "ses_a", f"trn_{n}")
    await asyncio.sleep(0.2)
    assert len(cp.snapshots()) == expected


async def test_lease_lost_on_an_upload_drops_the_session(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    cp.snapshot_error = (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: not w.worker.session_ids, timeout=3, what="session dropped")
    # The runtime is closed just after the session leaves the table: wait for it, not race it.
    await eventually(lambda: w.registry.instances[0].closed, timeout=3, what="its runtime closed")
    assert not cp.lease_requests("release")  # not ours any more: nothing to give back


async def test_snapshot_requested_uses_the_same_upload_with_its_request_id(fake_cp, start_worker):
    cp, target = fake_cp
    start_worker(target, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    cp.push(wpb.LeaseResponse(snapshot=wpb.SnapshotRequested(session_id="ses_a", lease_epoch=1, request_id="req_9")))
    await eventually(lambda: cp.snapshots(), timeout=3, what="requested snapshot")
    header, items = cp.snapshots()[0]
    assert (header.request_id, header.seq, len(items)) == ("req_9", 3, 2)
