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

from ._harness import control_plane_flags, emit, procs, retry

WORKERS = 4
SLOTS = 8
DRIVERS = 64
# How long an idle session stays loaded. The control plane's --session-idle-s, when it has
# one, is set to this; the bench then waits it out (plus the sweep that evicts).
IDLE_S = 20.0
IDLE_CPU_WINDOW_S = 10.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_cpu_pct(pid: int, window_s: float) -> float:
    before, t0 = cpu_s(pid), time.monotonic()
    await asyncio.sleep(window_s)
    return 100 * (cpu_s(pid) - before) / (time.monotonic() - t0)


async def load(target: str, sessions: int, deadline: float) -> None:
    """`sessions` sessions, each created, run one turn and read back, DRIVERS at a time."""
    from tether import sdk

    from ._harness import client_options

    next_k = 0
    async with sdk.AsyncClient(target, timeout_s=30, options=client_options()) as client:

        async def driver() -> None:
            nonlocal next_k
            while next_k < sessions:
                k = next_k
                next_k += 1
                session = await retry(lambda: client.create_session("shell"), deadline=deadline)
                turn = await retry(
                    lambda s=session.session_id, k=k: client.send_input(s, "true", idempotency_key=f"t{k}"),
                    deadline=deadline,
                )
                done = await client.wait_for_turn(
                    session.session_id, turn.turn_id, timeout_s=max(1.0, deadline - time.monotonic())
                )
                if done.state is not sdk.TurnState.COMPLETED:
                    raise RuntimeError(f"turn {turn.turn_id} ended {done.state.name}: {done.error_message}")
                await client.get_session(session.session_id)

        await asyncio.gather(*(driver() for _ in range(DRIVERS)))


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
        await load(cp.target, sessions, time.monotonic() + deadline_s)
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
    large_rss, idle = await measure(large, deadline_s=1200)
    emit(f"cp_rss_mib_after_{suffix}_sessions", large_rss, "MiB", load_s=round(time.monotonic() - t0, 1))
    emit(f"cp_rss_growth_mib_1k_to_{suffix}", large_rss - small_rss, "MiB")
    emit(f"cp_idle_cpu_pct_{suffix}_sessions", idle, "%")
