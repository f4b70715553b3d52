"""The execution worker's memory as the sessions it has run pile up.

    worker_rss_mib_fresh                 RSS of a shell worker connected to the control plane,
                                         before its first session
    worker_rss_mib_after_10k_sessions    RSS of the same worker after 10,000 sessions were each
                                         created and ran one turn (`true`) on it, then left idle
                                         (target: within 32 MiB of the fresh figure)

One control plane on a fresh SQLite file and one shell worker, real processes. DRIVERS
concurrent drivers each create a session, send `true` and wait for the turn to end. The worker
keeps at most `--warm-sessions` (default 32) quiet sessions and releases the lease of every
other one it cools (final snapshot, then nothing of it left on the worker), so this measures
what the sessions a worker has run leave behind in it. RSS is VmRSS from /proc, read IDLE_S
after the last turn. The run is bounded by LOAD_DEADLINE_S; the line says how many sessions
ran and how many the worker still held (at most the warm bound). TETHER_BENCH_WORKER_SESSIONS runs another count
(the figure's name then says it).
"""

from __future__ import annotations

import asyncio
import os
import time

from ._footprint import one_turn_sessions, rss_mib
from ._harness import emit, procs, wait_connected

SLOTS = 16
DRIVERS = 32
IDLE_S = 10.0
LOAD_DEADLINE_S = 480.0


async def held_sessions(target: str, worker_id: str) -> int:
    from tether import sdk

    async with sdk.AsyncClient(target, timeout_s=30) as client:
        workers = await client.list_workers()
    return next((w.held_sessions for w in workers if w.worker_id == worker_id), -1)


async def main() -> None:
    sessions = int(os.environ.get("TETHER_BENCH_WORKER_SESSIONS", "10000"))
    suffix = "10k" if sessions == 10_000 else str(sessions)
    with procs() as ps:
        cp = ps.start_control_plane()
        worker = ps.worker(cp.target, "w0", SLOTS)
        worker_id = ps.worker_id("w0")
        await wait_connected(cp.target, [worker_id])
        await asyncio.sleep(2.0)  # past start-up allocations
        fresh = rss_mib(worker.pid)
        emit("worker_rss_mib_fresh", fresh, "MiB")
        t0 = time.monotonic()
        completed = await one_turn_sessions(cp.target, sessions, drivers=DRIVERS, deadline=t0 + LOAD_DEADLINE_S)
        load_s = time.monotonic() - t0
        await asyncio.sleep(IDLE_S)
        after = rss_mib(worker.pid)
        emit(
            f"worker_rss_mib_after_{suffix}_sessions",
            after,
            "MiB",
            sessions=completed,
            held_sessions=await held_sessions(cp.target, worker_id),
            growth_mib=round(after - fresh, 1),
            load_s=round(load_s, 1),
        )
