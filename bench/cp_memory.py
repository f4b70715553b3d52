"""The control plane's memory and idle CPU as sessions pile up.

    cp_rss_mib_1k_sessions           RSS after 1,000 sessions were each created, ran one turn and
                                     were read back, then left idle for the eviction interval
    cp_rss_mib_after_100k_sessions   the same with 100,000 sessions, on a fresh control plane
    cp_rss_growth_mib_1k_to_100k     the difference (target: at most 64 MiB)
    cp_idle_cpu_pct_100k_sessions    the control plane's CPU, in % of one core, over 10 s with
                                     those 100,000 sessions idle (target: under 1 %)

Each run: a control plane on a fresh SQLite file and four shell workers with eight slots each;
64 concurrent drivers each create a session, send `true`, wait for the turn to end and read the
session back with GetSession. Then nothing is sent for the eviction interval plus a margin, and
the control plane's RSS (VmRSS in /proc) and CPU (utime + stime in /proc) are read. Set
TETHER_BENCH_SESSIONS to run a smaller large run (the figure's name then says how many).
"""

from __future__ import annotations

import asyncio
import os
import time

from ._footprint import idle_cpu_pct, one_turn_sessions, rss_mib
from ._harness import control_plane_flags, emit, procs

WORKERS = 4
SLOTS = 8
DRIVERS = 64
# How long an idle session stays loaded. The control plane's --session-idle-s, when it has
# one, is set to this; the bench then waits it out (plus the sweep that evicts).
IDLE_S = 20.0
IDLE_CPU_WINDOW_S = 10.0


async def measure(sessions: int, *, deadline_s: float) -> tuple[float, float]:
    """(RSS MiB after the idle interval, idle CPU %) of a fresh control plane after the load."""
    extra: list[str] = []
    if "--session-idle-s" in control_plane_flags():
        extra = ["--session-idle-s", str(IDLE_S)]
    with procs() as ps:
        cp = ps.start_control_plane(*extra)
        for i in range(WORKERS):
            ps.worker(cp.target, f"w{i}", SLOTS)
        assert cp.proc is not None
        done = await one_turn_sessions(
            cp.target, sessions, drivers=DRIVERS, deadline=time.monotonic() + deadline_s, read_back=True
        )
        if done < sessions:
            raise RuntimeError(f"only {done} of {sessions} sessions ran their turn within {deadline_s:g}s")
        await asyncio.sleep(IDLE_S * 1.5 + 2)
        rss = rss_mib(cp.proc.pid)
        cpu = await idle_cpu_pct(cp.proc.pid, IDLE_CPU_WINDOW_S)
        return rss, cpu


async def main() -> None:
    large = int(os.environ.get("TETHER_BENCH_SESSIONS", "100000"))
    suffix = "100k" if large == 100_000 else str(large)
    small_rss, _ = await measure(1000, deadline_s=120)
    emit("cp_rss_mib_1k_sessions", small_rss, "MiB")
    t0 = time.monotonic()
    large_rss, idle = await measure(large, deadline_s=2400)
    emit(f"cp_rss_mib_after_{suffix}_sessions", large_rss, "MiB", load_s=round(time.monotonic() - t0, 1))
    emit(f"cp_rss_growth_mib_1k_to_{suffix}", large_rss - small_rss, "MiB")
    emit(f"cp_idle_cpu_pct_{suffix}_sessions", idle, "%")
