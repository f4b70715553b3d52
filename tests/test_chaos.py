"""A small chaos run with real processes: workers SIGKILLed and restarted, the control plane
SIGKILLed and restarted on the same database and port, while sessions run multi-turn work.
Every session's log must come out whole: no lost session, no duplicated event, no stale write.
The run and its checks are `bench.chaos` (the 200-session version is in `make bench`)."""

from __future__ import annotations

import pytest

from bench.chaos import ChaosConfig, run_chaos


@pytest.mark.timeout(110)
async def test_sessions_survive_worker_kills_and_a_control_plane_crash(tmp_path):
    cfg = ChaosConfig(
        sessions=6,
        workers=2,
        slots=2,
        turns=(3, 3),
        sleep_s=(0.4, 0.8),  # long enough for kills to land mid-turn
        cp_restarts=1,
        max_worker_kills=2,
        kill_interval_s=(0.6, 1.2),
        worker_down_s=(0.2, 1.5),
        cp_down_s=(0.2, 0.5),
        time_cap_s=60,
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
    assert res.turns_sent >= res.turns_intended == 18
