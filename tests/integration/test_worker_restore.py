"""Restore-only placements (rehydrate, refuse, release with a reason) and the warm bound (dormant
sessions rehydrated with their event numbering continued); against the scripted
control plane in tests/helpers/fake_control_plane.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from tests.helpers.fake_control_plane import FakeControlPlane, Running, _connected, _run_turn
from tests.helpers.processes import eventually
from tether.execution_worker import HistoryRole
from tether.v1 import resources_pb2 as rpb
from tether.v1 import worker_service_pb2 as wpb

# -- D, E: restore-only placements -----------------------------------------------------------------


def _resume_material(session_id: str) -> list[wpb.ResumeResponse]:
    """A snapshot at seq 3 holding one turn, then a second turn's events up to seq 7."""

    def event(seq: int, turn_id: str, **body: Any) -> rpb.Event:
        return rpb.Event(session_id=session_id, seq=seq, turn_id=turn_id, body=rpb.EventBody(**body))

    return [
        wpb.ResumeResponse(
            snapshot_seq=3,
            runtime_metadata_json="{}",
            history=[
                rpb.HistoryItem(role=rpb.HISTORY_ITEM_ROLE_INPUT, text="echo one", turn_id="trn_1"),
                rpb.HistoryItem(role=rpb.HISTORY_ITEM_ROLE_OUTPUT, text="one\n", turn_id="trn_1"),
            ],
        ),
        wpb.ResumeResponse(
            events=[
                event(4, "trn_2", input_received=rpb.InputReceived(input="echo two")),
                event(5, "trn_2", turn_started=rpb.TurnStarted(worker_id="wkr_old")),
                event(6, "trn_2", output=rpb.OutputChunk(stream=rpb.OUTPUT_STREAM_STDOUT, text="two\n")),
                event(7, "trn_2", turn_completed=rpb.TurnCompleted()),
            ]
        ),
    ]


async def test_restore_only_offer_rehydrates_keeps_the_runtime_warm_and_confirms_with_a_snapshot(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_0", epoch=1)  # older local state, at epoch 1
    old_runtime = w.registry.instances[0]
    cp.resume_chunks = _resume_material("ses_a")
    cp.last_seq["ses_a"] = 7
    cp.offer("ses_a", epoch=2, resume_required=True, restore_only=True)
    await eventually(lambda: cp.snapshots(), timeout=3, what="confirmation snapshot")

    [accept] = cp.lease_requests("accept")[1:]
    assert (accept.accept.session_id, accept.accept.turn_id, accept.accept.lease_epoch) == ("ses_a", "", 2)
    [resume] = cp.resumes()[1:]
    assert (resume.session_id, resume.lease_epoch) == ("ses_a", 2)
    assert old_runtime.closed  # epoch 1's runtime was retired
    restored = w.registry.instances[1]
    assert [(h.role, h.text) for h in restored.started_with] == [
        (HistoryRole.INPUT, "echo one"),
        (HistoryRole.OUTPUT, "one\n"),
        (HistoryRole.INPUT, "echo two"),
        (HistoryRole.OUTPUT, "two\n"),
    ]
    header, items = cp.snapshots()[0]
    assert (header.session_id, header.lease_epoch, header.request_id) == ("ses_a", 2, "")
    assert header.seq == 7 and len(items) == 4  # covers all it was rehydrated from
    assert order_after(cp.order(), "accept") == ["resume", "snapshot"]
    assert [(r.session_id, r.lease_epoch) for r in w.worker.held_leases()] == [("ses_a", 2)]

    # The next turn at that epoch runs on the warm runtime: no second Resume.
    resumes = len(cp.resumes())
    await _run_turn(cp, "ses_a", "trn_3", epoch=2, resume_required=False)
    assert len(cp.resumes()) == resumes
    assert w.registry.turns[-1] == (restored, "trn_3")
    assert len(w.registry.instances) == 2


def order_after(names: list[str], last: str) -> list[str]:
    """The names after the last `last`."""
    index = len(names) - 1 - names[::-1].index(last)
    return names[index + 1 :]


@pytest.mark.parametrize(
    ("failure", "reason_prefix"),
    [
        ("resume", "rehydration failed: Resume failed: INTERNAL"),
        ("start", "rehydration failed: could not start the fake runtime"),
    ],
)
async def test_a_restore_that_cannot_rehydrate_releases_the_lease_with_the_reason(
    fake_cp, start_worker, failure, reason_prefix
):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    if failure == "resume":
        cp.resume_error = (grpc.StatusCode.INTERNAL, "the log is unreadable")
    else:
        w.registry.fail_start = "no history for you"
    cp.offer("ses_a", epoch=3, resume_required=True, restore_only=True)
    await eventually(lambda: cp.lease_requests("release"), timeout=3, what="release")
    [release] = cp.lease_requests("release")
    assert (release.release.session_id, release.release.lease_epoch) == ("ses_a", 3)
    assert release.release.reason.startswith(reason_prefix), release.release.reason
    assert w.worker.session_ids == [] and not w.worker.held_leases()
    await asyncio.sleep(0.1)
    assert not cp.snapshots()  # fail closed: never an empty runtime confirmed as restored
    assert all(r.closed for r in w.registry.instances)


async def test_restore_only_offers_follow_the_turn_rejection_rules(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, slots=1)
    await _connected(cp)
    cp.offer("ses_x", epoch=1, runtime="codex", restore_only=True, resume_required=True)
    await eventually(lambda: cp.lease_requests("reject"), timeout=3, what="runtime reject")
    assert cp.lease_requests("reject")[-1].reject.reason.startswith("runtime 'codex' not available")

    # An accepted restore holds the only slot until it is granted.
    cp.auto_grant = False
    cp.offer("ses_r", epoch=1, restore_only=True, resume_required=True)
    await eventually(lambda: cp.lease_requests("accept"), timeout=3, what="restore accepted")
    cp.offer("ses_t", "trn_1", "x")
    await eventually(lambda: len(cp.lease_requests("reject")) == 2, timeout=3, what="no-slot reject")
    assert cp.lease_requests("reject")[-1].reject.reason == "no free slot"
    cp.push(wpb.LeaseResponse(granted=wpb.OfferGranted(session_id="ses_r", turn_id="", lease_epoch=1)))
    await eventually(lambda: cp.snapshots(), timeout=3, what="restore confirmed")
    assert w.worker.session_ids == ["ses_r"]


# -- F: bounded memory ---------------------------------------------------------------------------


def _footprint(r: Running) -> dict[str, int]:
    """How many entries the worker's per-session structures hold, and how many runtimes are open."""
    sizes = r.worker._sessions.sizes()
    sizes["reservations"] = r.worker._turns.reserved
    sizes["open_runtimes"] = sum(1 for runtime in r.registry.instances if not runtime.closed)
    return sizes


def _revoke(cp: FakeControlPlane, session_id: str, epoch: int = 1) -> None:
    cp.push(wpb.LeaseResponse(revoked=wpb.LeaseRevoked(session_id=session_id, lease_epoch=epoch, reason="test")))


async def test_a_worker_keeps_the_sessions_it_holds_and_at_most_warm_sessions_runtimes(fake_cp, start_worker):
    cp, target = fake_cp
    warm = 4
    w = start_worker(target, warm_sessions=warm)
    await _connected(cp)
    sessions = [f"ses_{k:02d}" for k in range(30)]
    for k, session_id in enumerate(sessions):
        await _run_turn(cp, session_id, f"trn_{k}")
    # Every session is still held (its lease is renewed), but only `warm` keep a runtime.
    await eventually(lambda: _footprint(w)["live"] == warm, timeout=5, what="quiet sessions beyond the bound dormant")
    assert sorted(w.worker.session_ids) == sessions
    assert sorted((ref.session_id, ref.lease_epoch) for ref in w.worker.held_leases()) == [(s, 1) for s in sessions]
    assert _footprint(w) == {
        "live": warm,
        "dormant": len(sessions) - warm,
        "warm_runtimes": warm,
        "snapshot_tasks": 0,
        "reservations": 0,
        "open_runtimes": warm,
    }
    assert sorted(w.worker.warm_session_ids) == sessions[-warm:]  # the most recently used

    # Released sessions (revoked, here) leave nothing behind, warm or dormant.
    for session_id in sessions[10:]:
        _revoke(cp, session_id)
    await eventually(lambda: len(w.worker.session_ids) == 10, timeout=3, what="revocations")
    await eventually(lambda: _footprint(w)["open_runtimes"] == 0, timeout=3, what="warm runtimes of revoked closed")
    assert sorted(w.worker.session_ids) == sessions[:10]
    assert _footprint(w)["dormant"] == 10 and _footprint(w)["live"] == 0

    for session_id in sessions[:10]:
        _revoke(cp, session_id)
    await eventually(lambda: not w.worker.session_ids, timeout=3, what="every session revoked")
    assert _footprint(w) == dict.fromkeys(_footprint(w), 0)
    assert not w.worker.held_leases()
    await eventually(lambda: len(w.worker._tasks) == 1, timeout=3, what="only the lease loop left")


async def test_a_dormant_session_is_rehydrated_by_its_next_turn_and_numbers_its_events_on(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=1)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await _run_turn(cp, "ses_b", "trn_2")
    await eventually(lambda: w.worker.warm_session_ids == ["ses_b"], timeout=3, what="ses_a dormant")
    first = w.registry.instances[0]
    assert first.closed and sorted(w.worker.session_ids) == ["ses_a", "ses_b"]
    resumes = len(cp.resumes())  # each first turn rehydrated its new session

    await _run_turn(cp, "ses_a", "trn_3")
    [resume] = cp.resumes()[resumes:]
    assert (resume.session_id, resume.lease_epoch) == ("ses_a", 1)  # still its lease: no new epoch
    assert w.registry.turns[-1] == (w.registry.instances[2], "trn_3")
    # The woken session's outbox goes on where the closed one stopped: the server drops
    # duplicates by worker_seq, so numbering again from 1 would lose these events.
    assert [e.worker_seq for sid, e in cp.stored if sid == "ses_a"] == [1, 2, 3, 4, 5, 6]
    await eventually(lambda: w.worker.warm_session_ids == ["ses_a"], timeout=3, what="ses_b dormant")


async def test_a_session_goes_dormant_with_a_snapshot_covering_it_and_a_drain_releases_it(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=0, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    # No after-turn policy, but the runtime's history must not leave the worker unsnapshotted.
    await eventually(lambda: not w.worker.warm_session_ids, timeout=3, what="ses_a dormant")
    [(header, items)] = cp.snapshots()
    assert (header.session_id, header.seq, len(items)) == ("ses_a", cp.last_seq["ses_a"], 2)
    assert w.registry.instances[0].closed and w.worker.session_ids == ["ses_a"]

    w.worker.request_drain()
    await asyncio.wait_for(w.task, 5)
    [release] = cp.lease_requests("release")
    assert (release.release.session_id, release.release.reason) == ("ses_a", "worker drained")
    assert len(cp.snapshots()) == 1  # the dormant session's snapshot already covered it


async def test_a_snapshot_requested_of_a_dormant_session_rehydrates_it_first(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: not w.worker.warm_session_ids, timeout=3, what="ses_a dormant")
    resumes = len(cp.resumes())
    cp.resume_chunks = _resume_material("ses_a")
    cp.push(wpb.LeaseResponse(snapshot=wpb.SnapshotRequested(session_id="ses_a", lease_epoch=1, request_id="req_1")))
    await eventually(lambda: any(h.request_id == "req_1" for h, _ in cp.snapshots()), timeout=3, what="snapshot")
    [(header, items)] = [(h, i) for h, i in cp.snapshots() if h.request_id == "req_1"]
    assert [(r.session_id, r.lease_epoch) for r in cp.resumes()[resumes:]] == [("ses_a", 1)]
    assert (header.seq, len(items)) == (7, 4)
