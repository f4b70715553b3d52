"""A small chaos run with real processes: workers SIGKILLed and restarted, the control plane
SIGKILLed and restarted on the same database and port (taking a worker down with it), while
sessions run multi-turn work.
Every session's log must come out whole: no lost session, no duplicated event, no stale write.
Every turn also appends a line to a file in the session's workspace, which moves with the
session: no line of a stored checkpoint may be missing from the file at the end, and the file
holds nothing the driver did not write.
The run and its checks are `bench.chaos` (the 200-session version is in `make bench`)."""

from __future__ import annotations

import pytest

from bench._chaos_checks import Attempt, SessionRun, StoredLedger, check_ledger
from bench._harness import client_options, procs
from bench.chaos import ChaosConfig, run_chaos
from tests.helpers.processes import eventually
from tether import sdk


@pytest.mark.timeout(110)
async def test_sessions_survive_worker_kills_and_a_control_plane_crash(tmp_path):
    cfg = ChaosConfig(
        sessions=6,
        workers=2,
        slots=2,
        turns=(4, 4),  # long enough for sessions to move after their first checkpoints
        sleep_s=(0.4, 0.8),  # long enough for kills to land mid-turn
        cp_restarts=1,
        max_worker_kills=4,
        max_worker_freezes=1,
        kill_interval_s=(0.6, 1.2),
        worker_down_s=(0.2, 1.5),
        cp_down_s=(0.2, 0.5),
        aim_at_running_turns=True,  # so that a kill moves a session however loaded the machine is
        time_cap_s=45,
        cp_timings={"lease_ttl_s": 3, "heartbeat_interval_s": 0.3, "worker_dead_grace_s": 0.5},
        seed=7,
        keep_logs_on_failure=False,
    )
    res = await run_chaos(cfg, tmp_path / "chaos")
    detail = f"problems: {res.problems}; other failures: {res.failure_samples}; logs in {tmp_path / 'chaos'}"
    assert res.missing_cp_flags == [], f"control plane lacks {res.missing_cp_flags}"
    assert res.worker_kills >= 1 and res.cp_restarts == 1, f"chaos did not happen: {res}"
    assert res.sessions_lost == 0, detail
    assert res.events_duplicated == 0, detail
    assert res.stale_writes_accepted == 0, detail
    assert res.checkpointed_lines_lost == 0, detail
    assert res.ledger_lines_bad == 0, detail
    assert res.lines_checkpointed > 0 and res.workspace_restored >= 1, f"no workspace moved: {res}"
    assert res.turns_sent >= res.turns_intended == 24


def _ledger_session(stored_texts: list[tuple[int, str]], printed: str) -> tuple[SessionRun, list, list]:
    """A session of 2 intended turns (the first sent twice) and its ledger read at seq 20."""
    run = SessionRun(3, 2, session_id="s")
    for j, a, outcome in [(0, 0, "turn_failed"), (0, 1, "turn_completed"), (1, 0, "turn_completed")]:
        run.attempts.append(Attempt(j, a, f"k{j}{a}", turn_id=f"t{j}{a}", outcome=outcome))
    run.attempts.append(Attempt(2, 0, "read", turn_id="read", outcome="turn_completed"))
    events = [
        sdk.Event("s", 20, "read", None, sdk.EventKind.INPUT_RECEIVED),
        sdk.Event("s", 21, "read", None, sdk.EventKind.OUTPUT, text=printed, stream="stdout"),
        sdk.Event("s", 22, "read", None, sdk.EventKind.TURN_COMPLETED),
    ]
    return run, events, [StoredLedger(seq, text) for seq, text in stored_texts]


def test_the_ledger_check_sees_a_lost_or_foreign_line():
    """The check itself, on made-up ledgers: it must not pass whatever it is given."""
    whole = "s3-t0-attempt0\ns3-t0-attempt1\ns3-t1-attempt0\n"
    ok = check_ledger(*_ledger_session([(5, "s3-t0-attempt0\n"), (12, whole), (25, whole)], whole))
    assert ok is not None and (ok.lines_lost, ok.lines_bad, ok.checkpoints, ok.lines_checkpointed) == (0, 0, 2, 3)
    assert ok.lost_attempts_kept == 1  # attempt 0 of turn 0 wrote its line before it was lost
    # The read lost the checkpoint's last line.
    lost = check_ledger(*_ledger_session([(12, whole)], "s3-t0-attempt0\ns3-t0-attempt1\n"))
    assert lost is not None and lost.lines_lost == 1 and lost.completed_not_kept == 1
    # A later checkpoint does not extend an earlier one.
    fork = check_ledger(*_ledger_session([(5, "s3-t0-attempt0\n"), (12, "s3-t0-attempt1\n")], "s3-t0-attempt1\n"))
    assert fork is not None and fork.lines_lost == 1
    # A line written twice, a torn line, another session's line.
    for bad in (whole + "s3-t1-attempt0\n", whole + "s3-t1-att", whole + "s4-t1-attempt0\n"):
        tally = check_ledger(*_ledger_session([(12, whole)], bad))
        assert tally is not None and tally.lines_bad == 1 and tally.lines_lost == 0, bad
    # A checkpoint whose blob is not there.
    gone = check_ledger(*_ledger_session([], whole)[:2], [StoredLedger(12, "", unreadable="blob x is not stored")])
    assert gone is not None and gone.lines_lost == 1


@pytest.mark.timeout(60)
async def test_worker_restarted_across_a_control_plane_restart_gets_its_turn_stored(tmp_path):
    """Found by the chaos run: a worker restarted (same id, nothing held) while the control plane
    was down got its old lease epoch back; its events, numbered from 1 again, were taken as
    duplicates and the turn stayed running forever. It must get a new epoch and be stored."""
    with procs(tmp_path / "p") as ps:
        cp = ps.start_control_plane(log_level="INFO")
        w = ps.worker(cp.target, "w", 2, log_level="info")
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:
            s = await client.create_session("shell")
            t1 = await client.send_input(s.session_id, "echo one")
            first = await client.wait_for_turn(s.session_id, t1.turn_id, timeout_s=20)
            assert first.state == sdk.TurnState.COMPLETED
        ps.kill(w)
        cp.kill()
        cp.start()  # same database, same port
        ps.worker(cp.target, "w", 2, log_level="info")  # same workdir: same worker id, nothing held
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:

            async def reconnected() -> bool:
                return any(w.connected for w in await client.list_workers())

            await eventually(reconnected, timeout=20, what="the restarted worker connected")
            t2 = await client.send_input(s.session_id, "echo two")
            done = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=8)
            assert done.state == sdk.TurnState.COMPLETED and done.lease_epoch > first.lease_epoch
            events = [e async for e in client.stream_events(s.session_id, stop_at_end=True)]
            assert "two\n" in [e.text for e in events if e.turn_id == t2.turn_id]
