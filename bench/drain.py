"""drain_lost_turns (must be 0) and drain_duration_ms: a worker is drained (SIGTERM) in the
middle of a steady load; no submitted turn may be lost or run twice.

One control plane (default timings) and two shell workers (4 slots each, --drain-grace-s 30)
as processes. 16 sessions each send turns back to back for 8 s: turn k of session i is
``echo si-tk-a; sleep 0.1-0.5; echo si-tk-b`` with its own idempotency key, sent once and never
resent. 3 s in, the worker holding the most sessions gets SIGTERM: it takes no new offers,
finishes its running turns, uploads final snapshots, releases its leases and exits (status 0
expected). Its sessions' next turns move to the other worker.

drain_lost_turns counts submitted turns that did not end completed with exactly their output
(failed, interrupted, or never ended within 60 s of the load's end) plus any turn the logs
show ran or was stored twice (a second turn_started, a repeated output line, an intended turn
completed twice); every session's log is also checked as in `bench.chaos` (gapless seq, one
terminal event per turn, epochs never going down): drain_log_problems must be 0 too.
drain_duration_ms is SIGTERM to the worker's exit.
"""

from __future__ import annotations

import asyncio
import random
import time

from tether import sdk

from ._harness import client_options, connected_workers, emit, procs, retry, wait_connected
from .chaos import Attempt, SessionRun, check_session

SESSIONS = 16
SLOTS = 4
LOAD_S = 8.0
DRAIN_AT_S = 3.0
SETTLE_TIMEOUT_S = 60.0


async def main() -> bool:
    rng = random.Random()
    with procs() as ps:
        cp = ps.start_control_plane()
        names = ("wa", "wb")
        workers = {n: ps.worker(cp.target, n, SLOTS, extra=("--drain-grace-s", "30")) for n in names}
        name_of = {ps.worker_id(n): n for n in names}
        await wait_connected(cp.target, list(name_of))
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:
            runs = [SessionRun(i, 0) for i in range(SESSIONS)]
            for run in runs:
                run.session_id = (await client.create_session("shell")).session_id
            t0 = time.monotonic()
            stop_sending = t0 + LOAD_S
            deadline = stop_sending + SETTLE_TIMEOUT_S

            async def drive(run: SessionRun) -> None:
                while time.monotonic() < stop_sending:
                    j = run.n_turns
                    at = Attempt(j, 0, f"drain-s{run.index}-t{j}")
                    run.attempts.append(at)
                    run.n_turns += 1
                    command = run.command(j, at.a, rng.uniform(0.1, 0.5))
                    turn = await retry(
                        lambda command=command, at=at: client.send_input(
                            run.session_id, command, idempotency_key=at.key
                        ),
                        deadline=deadline,
                    )
                    at.turn_id = turn.turn_id
                    try:
                        done = await client.wait_for_turn(
                            run.session_id, turn.turn_id, timeout_s=max(0.1, deadline - time.monotonic())
                        )
                    except sdk.DeadlineExceededError:
                        run.error = f"turn {j} did not end in time"
                        return
                    at.outcome = {
                        sdk.TurnState.COMPLETED: "turn_completed",
                        sdk.TurnState.FAILED: "turn_failed",
                        sdk.TurnState.INTERRUPTED: "turn_interrupted",
                    }[done.state]
                    at.message = done.error_message
                    if done.state == sdk.TurnState.COMPLETED:
                        run.completed += 1

            async def drain() -> tuple[str, float, int, int]:
                await asyncio.sleep(DRAIN_AT_S)
                status = await connected_workers(cp.target)
                victim_id = max(name_of, key=lambda w: status[w].held_sessions if w in status else -1)
                held = status[victim_id].held_sessions
                p = workers[name_of[victim_id]]
                t = time.monotonic()
                p.terminate()
                code = await asyncio.to_thread(p.wait, 60)
                return victim_id, (time.monotonic() - t) * 1000, code, held

            drainer = asyncio.create_task(drain())
            await asyncio.gather(*(drive(r) for r in runs))
            victim_id, drain_ms, exit_code, held = await drainer
            logs = {}
            turns = {}
            for run in runs:
                logs[run.session_id] = [e async for e in client.stream_events(run.session_id, stop_at_end=True)]
                turns[run.session_id] = {
                    t: await client.get_turn(run.session_id, t)
                    for t in dict.fromkeys(e.turn_id for e in logs[run.session_id])
                }
    lost = 0
    problems: list[str] = []
    moved = 0
    submitted = 0
    for run in runs:
        events = logs[run.session_id]
        tally = check_session(run, events, [e.lease_epoch for e in events], turns[run.session_id], ledger_read=False)
        submitted += len(run.attempts)
        lost += sum(1 for a in run.attempts if a.outcome != "turn_completed") + tally.duplicated
        problems.extend(tally.problems[:2])
        moved += any(t.worker_id == victim_id for t in turns[run.session_id].values()) and any(
            t.worker_id != victim_id for t in turns[run.session_id].values()
        )
    emit("drain_lost_turns", lost, "turns", must_be=0, submitted=submitted, problems=problems[:5])
    emit("drain_duration_ms", drain_ms, "ms", exit_code=exit_code, sessions_held=held, sessions_moved=moved)
    emit("drain_log_problems", len(problems), "problems", must_be=0)
    return lost == 0 and not problems and exit_code == 0
