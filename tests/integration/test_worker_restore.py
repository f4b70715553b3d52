"""Restore-only placements (rehydrate, refuse, release with a reason) and the warm bound (quiet
sessions beyond it cooled: snapshotted, their lease released, their next turn rehydrated);
against the scripted control plane in tests/helpers/fake_control_plane.py, and the cooling once
against a real in-process control plane.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from tests.helpers.fake_control_plane import FakeControlPlane, Running, _connected, _run_turn
from tests.helpers.processes import eventually
from tether import sdk
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


def _held(renewal: wpb.LeaseRequest) -> list[str]:
    return sorted(ref.session_id for ref in renewal.renew.leases)


def _releases(cp: FakeControlPlane) -> list[tuple[str, int, str]]:
    return [(r.release.session_id, r.release.lease_epoch, r.release.reason) for r in cp.lease_requests("release")]


async def test_a_worker_keeps_at_most_warm_sessions_and_releases_the_leases_of_the_rest(fake_cp, start_worker):
    cp, target = fake_cp
    warm = 4
    w = start_worker(target, warm_sessions=warm)
    await _connected(cp)
    sessions = [f"ses_{k:02d}" for k in range(30)]
    for k, session_id in enumerate(sessions):
        await _run_turn(cp, session_id, f"trn_{k}")
    # Only `warm` sessions stay; the others were cooled: their leases went back to the control
    # plane, and nothing of them is left on the worker.
    await eventually(lambda: len(_releases(cp)) == len(sessions) - warm, timeout=5, what="cooled sessions released")
    reason = f"cooled: beyond the warm bound of {warm} sessions"
    assert sorted(_releases(cp)) == [(s, 1, reason) for s in sessions[:-warm]]
    assert sorted(w.worker.session_ids) == sessions[-warm:]  # the most recently used
    assert sorted(w.worker.warm_session_ids) == sessions[-warm:]
    assert sorted((ref.session_id, ref.lease_epoch) for ref in w.worker.held_leases()) == [
        (s, 1) for s in sessions[-warm:]
    ]
    await eventually(lambda: _footprint(w)["open_runtimes"] == warm, timeout=3, what="cooled runtimes closed")
    assert _footprint(w) == {
        "live": warm,
        "warm_runtimes": warm,
        "snapshot_tasks": 0,
        "reservations": 0,
        "open_runtimes": warm,
    }
    # Renewals carry the warm sessions' leases only.
    renewals = len(cp.lease_requests("renew"))
    await eventually(lambda: len(cp.lease_requests("renew")) > renewals, timeout=3, what="a renewal")
    assert _held(cp.lease_requests("renew")[-1]) == sessions[-warm:]

    # Revoked sessions leave nothing behind either.
    for session_id in sessions[-warm:]:
        _revoke(cp, session_id)
    await eventually(lambda: not w.worker.session_ids, timeout=3, what="every session revoked")
    await eventually(lambda: _footprint(w)["open_runtimes"] == 0, timeout=3, what="warm runtimes of revoked closed")
    assert _footprint(w) == dict.fromkeys(_footprint(w), 0)
    assert not w.worker.held_leases()
    await eventually(lambda: len(w.worker._tasks) == 1, timeout=3, what="only the lease loop left")


async def test_a_cooled_session_is_released_and_its_next_turn_rehydrates_at_the_next_epoch(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=1)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await _run_turn(cp, "ses_b", "trn_2")
    await eventually(lambda: _releases(cp), timeout=3, what="ses_a released")
    assert _releases(cp) == [("ses_a", 1, "cooled: beyond the warm bound of 1 sessions")]
    first = w.registry.instances[0]
    assert first.closed and w.worker.session_ids == ["ses_b"] == w.worker.warm_session_ids
    renewals = len(cp.lease_requests("renew"))
    await eventually(lambda: len(cp.lease_requests("renew")) > renewals, timeout=3, what="a renewal")
    assert _held(cp.lease_requests("renew")[-1]) == ["ses_b"]

    # The control plane places the next turn at the next epoch, asking for a Resume.
    resumes = len(cp.resumes())
    await _run_turn(cp, "ses_a", "trn_3", epoch=2, resume_required=True)
    [resume] = cp.resumes()[resumes:]
    assert (resume.session_id, resume.lease_epoch) == ("ses_a", 2)
    assert w.registry.turns[-1] == (w.registry.instances[2], "trn_3")
    # A new lease: its events are numbered from 1 again.
    events = [e for sid, e in cp.stored if sid == "ses_a"]
    assert [e.worker_seq for e in events] == [1, 2, 3, 1, 2, 3]
    await eventually(lambda: w.worker.session_ids == ["ses_a"], timeout=3, what="ses_b cooled in turn")
    assert _releases(cp)[-1][:2] == ("ses_b", 1)


async def test_an_offer_for_a_session_released_meanwhile_rehydrates_whatever_resume_required_says(
    fake_cp, start_worker
):
    """The control plane sent a sticky offer (same epoch, resume_required false) before it saw
    the worker's release: the worker no longer holds the session, so it rehydrates."""
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: _releases(cp), timeout=3, what="ses_a released")
    assert not w.worker.session_ids
    resumes = len(cp.resumes())
    cp.resume_chunks = _resume_material("ses_a")
    await _run_turn(cp, "ses_a", "trn_8", epoch=1, resume_required=False)
    [resume] = cp.resumes()[resumes:]
    assert (resume.session_id, resume.lease_epoch) == ("ses_a", 1)
    runtime, turn_id = w.registry.turns[-1]
    assert turn_id == "trn_8" and runtime is not w.registry.instances[0]
    assert [h.text for h in runtime.started_with or []] == ["echo one", "one\n", "echo two", "two\n"]
    [completed] = [e for e in cp.terminal_events("ses_a") if e.turn_id == "trn_8"]
    assert completed.body.WhichOneof("kind") == "turn_completed"


async def test_a_session_with_an_accepted_offer_awaiting_its_grant_is_not_cooled(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=0, snapshot_every_turns=0)
    await _connected(cp)
    cp.snapshot_gate.clear()  # the cooling's final snapshot waits
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: cp.snapshots(), timeout=3, what="the final snapshot under way")
    cp.auto_grant = False
    cp.offer("ses_a", "trn_2", "cmd trn_2", epoch=1, resume_required=False)
    await eventually(lambda: len(cp.lease_requests("accept")) == 2, timeout=3, what="trn_2 accepted")
    cp.snapshot_gate.set()
    await asyncio.sleep(0.2)
    # Released now, the grant that follows would fail the turn on the control plane.
    assert not _releases(cp) and w.worker.session_ids == ["ses_a"]
    resumes = len(cp.resumes())
    cp.push(wpb.LeaseResponse(granted=wpb.OfferGranted(session_id="ses_a", turn_id="trn_2", lease_epoch=1)))
    await eventually(lambda: any(e.turn_id == "trn_2" for e in cp.terminal_events("ses_a")), timeout=3, what="trn_2")
    assert len(cp.resumes()) == resumes  # ran on the warm runtime
    assert w.registry.turns[-1] == (w.registry.instances[0], "trn_2")
    await eventually(lambda: _releases(cp), timeout=3, what="ses_a cooled after its turn")
    assert _releases(cp) == [("ses_a", 1, "cooled: beyond the warm bound of 0 sessions")]


async def test_a_session_is_cooled_with_a_snapshot_covering_it_and_a_drain_has_nothing_left_to_release(
    fake_cp, start_worker
):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=0, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    # No after-turn policy, but the runtime's history must not leave the worker unsnapshotted.
    await eventually(lambda: _releases(cp), timeout=3, what="ses_a released")
    [(header, items)] = cp.snapshots()
    assert (header.session_id, header.seq, len(items)) == ("ses_a", cp.last_seq["ses_a"], 2)
    assert order_after(cp.order(), "snapshot") == ["release"]  # the snapshot first, then the release
    assert w.registry.instances[0].closed and not w.worker.session_ids

    w.worker.request_drain()
    await asyncio.wait_for(w.task, 5)
    assert len(_releases(cp)) == 1 and len(cp.snapshots()) == 1


async def test_a_snapshot_requested_of_a_cooled_session_is_not_answered_here(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: _releases(cp), timeout=3, what="ses_a released")
    resumes, snapshots = len(cp.resumes()), len(cp.snapshots())
    cp.push(wpb.LeaseResponse(snapshot=wpb.SnapshotRequested(session_id="ses_a", lease_epoch=1, request_id="req_1")))
    await asyncio.sleep(0.2)
    assert (len(cp.resumes()), len(cp.snapshots())) == (resumes, snapshots)
    assert not w.worker.session_ids


# -- against a real control plane --------------------------------------------------------------


async def test_a_cooled_session_has_no_holder_on_the_control_plane_and_its_next_turn_completes(
    control_plane, client, start_worker
):
    w = start_worker(f"127.0.0.1:{control_plane.port}", warm_sessions=1, worker_id="wkr_cool")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    a = await client.create_session("fake")
    b = await client.create_session("fake")
    for session, text in ((a, "first"), (b, "second")):
        turn = await client.send_input(session.session_id, text)
        done = await client.wait_for_turn(session.session_id, turn.turn_id, timeout_s=10)
        assert done.state == sdk.TurnState.COMPLETED, done

    async def a_released() -> bool:
        return (await client.get_session(a.session_id)).worker_id == ""

    await eventually(a_released, timeout=5, what="the first session's lease released")
    assert (await client.get_session(b.session_id)).worker_id == "wkr_cool"
    assert [ref.session_id for ref in w.worker.held_leases()] == [b.session_id]
    [status] = [s for s in await client.list_workers() if s.worker_id == "wkr_cool"]
    assert status.held_sessions == 1

    turn = await client.send_input(a.session_id, "third")
    done = await client.wait_for_turn(a.session_id, turn.turn_id, timeout_s=10)
    assert done.state == sdk.TurnState.COMPLETED, done
    runtime, turn_id = w.registry.turns[-1]
    assert turn_id == turn.turn_id
    assert [h.text for h in runtime.started_with or []][:1] == ["first"]  # rehydrated from the log
    assert (await client.get_session(a.session_id)).lease_epoch == 2


async def test_resume_is_retried_while_the_control_plane_is_away(fake_cp, start_worker):
    """A control plane restarting during a Resume answers UNAVAILABLE: the worker retries while
    the lease is still its own, and the restore completes instead of failing."""
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    cp.resume_chunks = _resume_material("ses_a")
    cp.resume_unavailable = 2
    cp.offer("ses_a", epoch=3, resume_required=True, restore_only=True)
    await eventually(lambda: cp.snapshots(), timeout=5, what="restore confirmed")
    assert len(cp.resumes()) == 3
    assert not cp.lease_requests("release")
    assert w.worker.session_ids == ["ses_a"]


async def test_turn_started_carries_the_runtime_thread_id_on_a_first_turn(fake_cp, start_worker):
    """turn_started is written once the runtime is up, so even a session's first turn (and the
    first after a move, which rehydrates) names the runtime's thread."""
    cp, target = fake_cp
    start_worker(target)
    await _connected(cp)
    for epoch, turn_id in ((1, "trn_first"), (2, "trn_moved")):
        cp.offer("ses_new", turn_id, "hello", epoch=epoch, resume_required=True)
        await eventually(
            lambda turn_id=turn_id: any(
                e.turn_id == turn_id and e.body.WhichOneof("kind") == "turn_started"
                for entry in cp.log
                if entry[0] == "events"
                for e in entry[1].events
            ),
            timeout=3,
            what=f"{turn_id} started",
        )
        started = [
            e.body.turn_started
            for entry in cp.log
            if entry[0] == "events"
            for e in entry[1].events
            if e.turn_id == turn_id and e.body.WhichOneof("kind") == "turn_started"
        ]
        assert [s.runtime_thread_id for s in started] == ["thread-ses_new"]
