"""What the memory and CPU benchmarks share: a process's RSS and CPU time from /proc, and a load
of sessions that each run one short turn."""

from __future__ import annotations

import asyncio
import os
import time

from ._harness import client_options, retry


def rss_mib(pid: int) -> float:
    """The process's resident set (VmRSS), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from its third field (state) on; the command name may hold spaces."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """The process's CPU time so far (utime + stime), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s(pid: int) -> float:
    """The CPU time of the process's children it has reaped (cutime + cstime), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


async def idle_cpu_pct(pid: int, window_s: float) -> float:
    """The process's CPU over the next `window_s`, in % of one core."""
    before, t0 = cpu_s(pid), time.monotonic()
    await asyncio.sleep(window_s)
    return 100 * (cpu_s(pid) - before) / (time.monotonic() - t0)


async def one_turn_sessions(
    target: str, sessions: int, *, drivers: int, deadline: float, read_back: bool = False
) -> int:
    """Up to `sessions` sessions, each created and run one `true` turn (then read back with
    GetSession when `read_back`), `drivers` at a time, until `deadline` (time.monotonic()).
    Returns how many completed; a turn that does not complete raises."""
    from tether import sdk

    started = completed = 0
    async with sdk.AsyncClient(target, timeout_s=30, options=client_options()) as client:

        async def driver() -> None:
            nonlocal started, completed
            while started < sessions and time.monotonic() < deadline:
                k = started
                started += 1
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
                if read_back:
                    await client.get_session(session.session_id)
                completed += 1

        await asyncio.gather(*(driver() for _ in range(drivers)))
    return completed
