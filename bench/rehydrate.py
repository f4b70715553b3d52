"""rehydrate_10k_items_ms: a fresh worker takes over a session whose history holds 10,000
items; how long its Resume + rehydration takes.

How the history is made (the cheapest honest way): the shell runtime's history is one INPUT
item per turn and one OUTPUT item per turn that printed something (all of a turn's output
chunks join into one item), so 10,000 items take 5,000 real turns. They are sent to one
session up front (SendInput, 64 in flight; the turns queue and run back to back) and run on
a builder worker with after-turn snapshots off, so no snapshot exists. Each turn is
``echo <n> <64 chars>``: items of about 70 bytes. That takes a while (about 5,000 x the
machine's per-turn cost) and is not part of the figure.

How it is measured: the worker is the real `execution_worker.Worker`, run as its own process
under uvloop exactly as `tether worker` runs it, but through this module
(``python -m bench.rehydrate --timed-worker ...``), which wraps `Worker._rehydrate` to time it.
That call is the whole takeover of a session: the Resume stream (snapshot items and the events
after it) read from the control plane, the history rebuilt from it, and the runtime started
with it. The worker appends ``<session> <items> <ms> <resume ms> <rebuild ms>`` per
rehydration to a file: the whole, the Resume call (reading the stream and rebuilding the
history), and the rebuilding alone (`history_from_resume`, timed by wrapping it), so the
figure's line also says how much of it is the stream (resume_stream_ms_p50) and how much the
rebuild (history_rebuild_ms_p50).

Rounds: the holder is SIGKILLed (so it leaves no final snapshot), a fresh worker (new id) is
started, and the session's next input makes the control plane move the session to it after
the worker-dead grace. Two kinds of takeover, 5 rounds each:

- rehydrate_10k_items_ms (the figure, p50; also _max): no snapshot exists, the history is
  rebuilt from the raw log: about 20,000 events (input, started, output, completed per turn).
  This is the worst case: a session whose worker died before any snapshot.
- rehydrate_10k_items_snapshot_ms (p50): a snapshot of the 10,000 items was taken first
  (CreateSnapshot), so Resume sends its items in chunks plus a short tail of events.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time

ITEMS = 10_000
TURNS = ITEMS // 2
IN_FLIGHT = 64
ROUNDS = 5
PAD = "x" * 64
BUILD_TIMEOUT_S = 240


async def main() -> bool:
    from tether import sdk

    from ._harness import client_options, emit, percentile, procs, wait_connected

    with procs() as ps:
        cp = ps.start_control_plane()
        timing = ps.tmp / "rehydrate.times"
        builder = ps.worker(cp.target, "builder", 1, extra=("--snapshot-every-turns", "0"))
        await wait_connected(cp.target, [ps.worker_id("builder")])
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:
            sid = (await client.create_session("shell")).session_id
            t0 = time.monotonic()
            sem = asyncio.Semaphore(IN_FLIGHT)
            last: list[str] = []

            async def send(n: int) -> None:
                async with sem:
                    t = await client.send_input(sid, f"echo {n} {PAD}", idempotency_key=f"build-{n}")
                    if n == TURNS - 1:
                        last.append(t.turn_id)

            await asyncio.gather(*(send(n) for n in range(TURNS)))
            # Turns run in the order they were stored: wait for the log to hold them all.
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while True:
                s = await client.get_session(sid)
                if not s.active_turn_id and s.state != sdk.SessionState.ACTIVE:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"history not built in {BUILD_TIMEOUT_S}s: {s}")
                await asyncio.sleep(0.5)
            build_s = time.monotonic() - t0
            holder = builder
            n_round = 0

            async def take_over(snapshots_every: int) -> None:
                nonlocal holder, n_round
                n_round += 1
                ps.kill(holder)
                name = f"timed{n_round}"
                holder = ps.spawn(
                    [
                        sys.executable,
                        "-m",
                        "bench.rehydrate",
                        "--timed-worker",
                        "--control-plane",
                        cp.target,
                        "--workdir",
                        str(ps.tmp / name),
                        "--times",
                        str(timing),
                        "--snapshot-every-turns",
                        str(snapshots_every),
                    ],
                    name,
                )
                await wait_connected(cp.target, [ps.worker_id(name)])
                t = await client.send_input(sid, f"echo round {n_round}")
                done = await client.wait_for_turn(sid, t.turn_id, timeout_s=60)
                if done.state != sdk.TurnState.COMPLETED:
                    raise RuntimeError(f"round {n_round}: turn {done.state.name}: {done.error_message}")

            for _ in range(ROUNDS):
                await take_over(0)
            snap = await client.create_snapshot(sid, timeout_s=60)
            for _ in range(ROUNDS):
                await take_over(0)
            ps.kill(holder)
        rows = [line.split() for line in timing.read_text().splitlines()]
    if len(rows) != 2 * ROUNDS:
        raise RuntimeError(f"expected {2 * ROUNDS} rehydrations, the workers logged {len(rows)}: {rows}")
    log_ms = [float(r[2]) for r in rows[:ROUNDS]]
    log_resume_ms = [float(r[3]) - float(r[4]) for r in rows[:ROUNDS]]
    log_convert_ms = [float(r[4]) for r in rows[:ROUNDS]]
    snap_ms = [float(r[2]) for r in rows[ROUNDS:]]
    items = [int(r[1]) for r in rows]
    emit(
        "rehydrate_10k_items_ms",
        percentile(log_ms, 50),
        "ms",
        source="event log, no snapshot",
        items=items[0],
        rounds=ROUNDS,
        target=200,
        build_s=round(build_s, 1),
        resume_stream_ms_p50=round(percentile(log_resume_ms, 50), 1),
        history_rebuild_ms_p50=round(percentile(log_convert_ms, 50), 1),
    )
    emit("rehydrate_10k_items_max_ms", max(log_ms), "ms", source="event log, no snapshot")
    emit(
        "rehydrate_10k_items_snapshot_ms",
        percentile(snap_ms, 50),
        "ms",
        source="snapshot + tail",
        items=items[ROUNDS],
        snapshot_items=len(snap.history),
        rounds=ROUNDS,
    )
    return True


def _timed_worker(argv: list[str]) -> None:
    """`tether worker` with `Worker._rehydrate` timed (see the module docstring)."""
    import argparse
    import logging

    import uvloop

    import tether.execution_worker._worker as worker_module
    from tether.execution_worker._settings import WorkerSettings
    from tether.execution_worker._worker import Worker

    convert_ms = [0.0]
    history_from_resume = worker_module.history_from_resume

    def timed_history_from_resume(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return history_from_resume(*args, **kwargs)
        finally:
            convert_ms[0] = (time.perf_counter() - t0) * 1000

    worker_module.history_from_resume = timed_history_from_resume

    p = argparse.ArgumentParser()
    p.add_argument("--timed-worker", action="store_true")
    p.add_argument("--control-plane", required=True)
    p.add_argument("--workdir", required=True, type=pathlib.Path)
    p.add_argument("--times", required=True, type=pathlib.Path)
    p.add_argument("--snapshot-every-turns", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = open(a.times, "a", buffering=1)

    class TimedWorker(Worker):
        resume_ms = 0.0

        async def _resume(self, *args, **kwargs):  # type: ignore[override]
            t0 = time.perf_counter()
            try:
                return await super()._resume(*args, **kwargs)
            finally:
                self.resume_ms = (time.perf_counter() - t0) * 1000

        async def _rehydrate(self, session, *args, **kwargs):  # type: ignore[override]
            t0 = time.perf_counter()
            runtime = await super()._rehydrate(session, *args, **kwargs)
            ms = (time.perf_counter() - t0) * 1000
            if runtime is not None:
                out.write(
                    f"{session.session_id} {len(runtime.export_history())} {ms:.3f} {self.resume_ms:.3f} {convert_ms[0]:.3f}\n"
                )
            return runtime

    settings = WorkerSettings(
        workdir=a.workdir, control_plane=a.control_plane, slots=1, snapshot_every_turns=a.snapshot_every_turns
    )

    async def serve() -> None:
        async with TimedWorker(settings) as w:
            await w.run()

    uvloop.run(serve())


if __name__ == "__main__":
    _timed_worker(sys.argv[1:])
