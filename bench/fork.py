"""fork_ms_p50: how long ForkSession takes for a session with 1,000 turns, from the call to
the fork being readable (the ForkSession call, then GetSession on the fork).

How the session is made: 1,000 shell turns (`echo <n> <64 chars>`, four events each: input,
started, output, completed; about 4,000 events) are sent to one session up front (SendInput,
64 in flight) and run back to back on one worker with after-turn snapshots off. Building it is
not part of the figure.

How it is measured: ROUNDS forks of the last turn, one after another, each timed on the
client's monotonic clock; the figure is the median (fork_ms_max the slowest). Each fork copies
every turn and event, so this is the most a 1,000-turn fork costs. One fork's next turn is then
run, to show the figure is of a fork that works (fork_next_turn_ok must be 1).
"""

from __future__ import annotations

import asyncio
import time

TURNS = 1_000
IN_FLIGHT = 64
ROUNDS = 15
PAD = "x" * 64
BUILD_TIMEOUT_S = 180


async def main() -> bool:
    from tether import sdk

    from ._harness import client_options, emit, percentile, procs, wait_connected

    with procs() as ps:
        cp = ps.start_control_plane()
        ps.worker(cp.target, "builder", 1, extra=("--snapshot-every-turns", "0"))
        await wait_connected(cp.target, [ps.worker_id("builder")])
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:
            sid = (await client.create_session("shell")).session_id
            sem = asyncio.Semaphore(IN_FLIGHT)

            async def send(n: int) -> None:
                async with sem:
                    await client.send_input(sid, f"echo {n} {PAD}", idempotency_key=f"build-{n}")

            await asyncio.gather(*(send(n) for n in range(TURNS)))
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while True:
                s = await client.get_session(sid)
                if s.state == sdk.SessionState.IDLE:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{TURNS} turns not run in {BUILD_TIMEOUT_S}s: {s}")
                await asyncio.sleep(0.5)
            events = s.last_seq

            timings = []
            fork = None
            for _ in range(ROUNDS):
                t0 = time.monotonic()
                fork = await client.fork_session(sid)
                await client.get_session(fork.session_id)
                timings.append((time.monotonic() - t0) * 1000)
            assert fork is not None and fork.turn_count == TURNS and fork.last_seq == events, fork
            turn = await client.send_input(fork.session_id, "echo after the fork")
            done = await client.wait_for_turn(fork.session_id, turn.turn_id, timeout_s=60)
            ok = done.state == sdk.TurnState.COMPLETED

    emit("fork_ms_p50", round(percentile(timings, 50), 2), "ms", turns=TURNS, events=events, rounds=ROUNDS)
    emit("fork_ms_max", round(max(timings), 2), "ms")
    emit("fork_next_turn_ok", int(ok), "bool")
    return ok


if __name__ == "__main__":
    asyncio.run(main())
