"""failover_ms_p50 / _p90 / _max: a worker dies mid-turn; how long until the session's next
turn starts on another worker, at the control plane's default timings.

One control plane (no timing flags: worker-dead grace, lease TTL, heartbeat all default) and
two shell workers, as processes. One session gets some history, then each round:

1. the session's next turn is a long one (``echo long-<r>; sleep 6``) on the worker holding
   the session; we wait until its first output is stored, so it is really running there;
2. that worker is SIGKILLed (the wall clock is read just before the kill);
3. the next input is sent at once (``echo next-<r>``): it queues behind the running turn;
4. the figure is the time from the kill to the stored time (`create_time`, the control plane's
   wall clock on the same machine) of the next turn's turn_started event, which the other
   worker writes once the control plane has ended the lost turn (turn_failed, worker_lost)
   and handed the session over with a new lease epoch.

The killed worker is started again (same workdir, same id) and we wait for it to be connected
before the next round, so every round starts with two workers. Also printed:
failover_detect_ms_p50, from the kill to the stored turn_failed of the lost turn. Rounds that
break the contract (the lost turn not failed with worker_lost, the next turn not started on
the other worker, or not completed) are counted in `failover_rounds_bad` (must be 0).
"""

from __future__ import annotations

import time

from tether import sdk

from ._harness import client_options, emit, percentile, procs, wait_connected

ROUNDS = 10
LONG_SLEEP_S = 6  # the killed worker's orphaned `sleep` ends by itself after this
ROUND_TIMEOUT_S = 60


def _stored_ns(e: sdk.Event) -> int:
    return e.raw.create_time.ToNanoseconds()


async def main() -> bool:
    failover_ms: list[float] = []
    detect_ms: list[float] = []
    bad: list[str] = []
    with procs() as ps:
        cp = ps.start_control_plane()
        names = ("wa", "wb")
        workers = {n: ps.worker(cp.target, n, 2) for n in names}
        name_of = {ps.worker_id(n): n for n in names}
        await wait_connected(cp.target, list(name_of))
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:
            sid = (await client.create_session("shell")).session_id
            for k in range(3):
                t = await client.send_input(sid, f"echo history-{k}")
                await client.wait_for_turn(sid, t.turn_id, timeout_s=30)
            cursor = (await client.get_session(sid)).last_seq
            for r in range(ROUNDS):
                holder = (await client.get_session(sid)).worker_id
                victim = name_of[holder]
                long = await client.send_input(sid, f"echo long-{r}; sleep {LONG_SLEEP_S}")
                events = client.stream_events(sid, after_seq=cursor, timeout_s=ROUND_TIMEOUT_S)
                try:
                    async for e in events:
                        cursor = e.seq
                        if e.turn_id == long.turn_id and (e.kind == sdk.EventKind.OUTPUT or e.is_terminal):
                            break
                finally:
                    await events.aclose()
                kill_ns = time.time_ns()
                ps.kill(workers[victim])
                nxt = await client.send_input(sid, f"echo next-{r}")
                lost_end = started = None
                events = client.stream_events(sid, after_seq=cursor, timeout_s=ROUND_TIMEOUT_S)
                try:
                    async for e in events:
                        cursor = e.seq
                        if e.turn_id == long.turn_id and e.is_terminal:
                            lost_end = e
                        elif e.turn_id == nxt.turn_id and e.kind == sdk.EventKind.TURN_STARTED:
                            started = e
                        elif e.turn_id == nxt.turn_id and e.is_terminal:
                            if e.kind != sdk.EventKind.TURN_COMPLETED:
                                bad.append(f"round {r}: next turn ended {e.kind.value}")
                            break
                finally:
                    await events.aclose()
                if lost_end is None or lost_end.kind != sdk.EventKind.TURN_FAILED or not lost_end.worker_lost:
                    bad.append(
                        f"round {r}: the lost turn ended {lost_end and lost_end.kind.value} "
                        f"(worker_lost={lost_end is not None and lost_end.worker_lost})"
                    )
                if started is None or started.worker_id == holder:
                    bad.append(f"round {r}: next turn started on {started and started.worker_id}, killed {holder}")
                if started is not None:
                    failover_ms.append((_stored_ns(started) - kill_ns) / 1e6)
                if lost_end is not None:
                    detect_ms.append((_stored_ns(lost_end) - kill_ns) / 1e6)
                workers[victim] = ps.worker(cp.target, victim, 2)
                await wait_connected(cp.target, list(name_of))
    emit("failover_ms_p50", percentile(failover_ms, 50), "ms", rounds=len(failover_ms), target=2000)
    emit("failover_ms_p90", percentile(failover_ms, 90), "ms")
    emit("failover_ms_max", max(failover_ms), "ms")
    emit("failover_detect_ms_p50", percentile(detect_ms, 50), "ms")
    emit("failover_rounds_bad", len(bad), "rounds", must_be=0, problems=bad[:5])
    return not bad and len(failover_ms) == ROUNDS
