"""delta_latency_ms_p50 / _p99: how long a live delta takes from the worker that emits it to a
subscriber of its session's event stream, with many sessions streaming at once.

The load: SESSIONS sessions, each running one turn at the same time on the `deltas` runtime
(`bench/_delta_runtime.py`: a real `Worker` whose runtime yields an agent-message `ItemDelta`
every 50 ms, 20 deltas/s a session, each carrying `time.time_ns()` read just before it is
yielded to the worker). One control plane on a fresh SQLite file; WORKERS worker processes
with enough slots that every turn runs at once. Every delta takes the path any streamed piece
of model text takes: the worker's event outbox, StreamEvents to the control plane, numbered,
committed, fanned out, and sent on `StreamSessionEvents`.

The subscriber: this process holds one `StreamSessionEvents` stream per session, opened just
before the inputs are sent (raw gRPC aio stubs over CHANNELS connections). For every delta it
reads, the latency is its receive time (`time.time_ns()` when the stream yields the message
holding it) minus the time in the delta. The window, on the deltas' own emit times: from
WARMUP_S after the last session's first delta, for MEASURE_S. Every delta emitted in it is
measured, however late it arrives. The run fails if the last turn's first delta was emitted
more than STARTUP_S after the inputs were sent. Once the window has closed the workers get
SIGUSR1, on which the runtime completes its turns, and the run waits until every stream has
read its turn's end.

Extra fields: where the time goes, split at the event's `create_time` (when the control plane
numbered the worker's batch, before its commit): `to_cp_ms_*` is emit -> numbered (the worker's
outbox and the StreamEvents hop), `cp_to_subscriber_ms_*` numbered -> received (the commit, the
fan-out, the send and this process's read). `emitted_per_s` is the deltas emitted in the window
over its length, `received_per_s` those this process read during it: below the load, the
pipeline does not keep up and the latency is a queue's. `client_lag_ms_p99` is how late this
process's own event loop ran a 10 ms timer during the window: a subscriber too busy to read adds
its lag to every figure. `cp_cpu_pct`, `workers_cpu_pct` (the worker processes together) and
`client_cpu_pct` (this process) are their CPU during the window in % of one core, and
`load_average` the machine's 1-minute load average at the end of the run: the machine has 2
cores, shared. `deltas_missing` (must be 0) counts the deltas a turn yielded (its completed
item says how many) that its stream never read; beside it, `out_of_order` (must be 0) the
deltas read other than once each in order (they are numbered from 0 in their turn), and
`turns_not_ended` (must be 0) the turns whose completion was not read.

TETHER_BENCH_QUICK=1 runs a small, short load (a smoke test); TETHER_BENCH_SESSIONS=N another
number of sessions (the load is then N x 20 deltas/s; `sessions` in the figures' lines says N).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass

import grpc

from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc

from ._delta_runtime import NAME, parse_delta, turn_input
from ._footprint import cpu_s
from ._harness import emit, percentile, procs, wait_connected

TERMINAL = {"turn_completed", "turn_failed", "turn_interrupted"}
#: How long the streams get to read their turns' ends once the turns are told to end.
END_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Config:
    sessions: int
    workers: int
    interval_ms: float
    warmup_s: float
    measure_s: float
    #: The last turn's first delta must be emitted within this long of the inputs.
    startup_s: float
    channels: int


FULL = Config(sessions=200, workers=4, interval_ms=50, warmup_s=2.0, measure_s=10.0, startup_s=10.0, channels=4)
QUICK = Config(sessions=20, workers=2, interval_ms=50, warmup_s=0.5, measure_s=1.5, startup_s=5.0, channels=2)


@dataclass
class Stream:
    session_id: str
    #: (receive ns, emit ns, numbered ns) per delta read, in the order read.
    deltas: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    #: Deltas read whose index was not the next one (a repeat, or one after a gap).
    out_of_order: int = 0
    #: How many deltas the turn yielded, as its completed item says (-1: not read).
    emitted: int = -1
    terminal: str = ""

    @property
    def missing(self) -> int:
        """Deltas the turn yielded and this stream did not read (all of them if the item's end
        was never read)."""
        return max(0, self.emitted - len(self.deltas)) if self.emitted >= 0 else max(1, len(self.deltas))


async def _read(stub: sgrpc.SessionServiceStub, s: Stream, first: asyncio.Event) -> None:
    call = stub.StreamSessionEvents(spb.StreamSessionEventsRequest(session_id=s.session_id))
    try:
        async for msg in call:
            now = time.time_ns()
            for e in msg.events:
                kind = e.body.WhichOneof("kind")
                if kind == "item_delta":
                    n, emitted = parse_delta(e.body.item_delta.delta)
                    if n != len(s.deltas):
                        s.out_of_order += 1
                    stored = e.create_time.seconds * 1_000_000_000 + e.create_time.nanos
                    s.deltas.append((now, emitted, stored))
                    first.set()
                elif kind == "item_completed":
                    s.emitted = int(e.body.item_completed.item.text.split()[0])
                elif kind in TERMINAL:
                    s.terminal = kind
                    return
    finally:
        first.set()  # also when the stream ends with no delta: the run need not wait for one
        call.cancel()


async def _loop_lag(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append((time.monotonic() - t - 0.01) * 1000)


def _cpu(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_s(pid) for pid in pids) for name, pids in groups.items()}


async def _sleep_until(ns: int) -> None:
    await asyncio.sleep(max(0.0, (ns - time.time_ns()) / 1e9))


async def delta_load(cfg: Config) -> dict[str, float]:
    # Turns longer than any run needs; they are ended once the window has closed.
    count = math.ceil((cfg.startup_s + cfg.warmup_s + cfg.measure_s + END_TIMEOUT_S) * 1000 / cfg.interval_ms)
    slots = math.ceil(cfg.sessions / cfg.workers)
    with procs() as ps:
        cp = ps.start_control_plane()
        target = cp.target
        assert cp.proc is not None
        workers = [
            ps.worker(target, f"w{i}", slots, module="bench._delta_runtime", extra=("--runtime", NAME))
            for i in range(cfg.workers)
        ]
        groups = {"cp": [cp.proc.pid], "workers": [w.pid for w in workers], "client": [os.getpid()]}
        await wait_connected(target, [ps.worker_id(f"w{i}") for i in range(cfg.workers)])
        # Separate connections (a channel per group of subscribers), as separate applications have.
        channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(cfg.channels)
        ]
        readers: list[asyncio.Task[None]] = []
        try:
            stubs = [sgrpc.SessionServiceStub(ch) for ch in channels]

            def stub(k: int) -> sgrpc.SessionServiceStub:
                return stubs[k % len(stubs)]

            created = await asyncio.gather(
                *(
                    stub(k).CreateSession(spb.CreateSessionRequest(runtime=NAME), timeout=30)
                    for k in range(cfg.sessions)
                )
            )
            streams = [Stream(r.session.session_id) for r in created]
            firsts = [asyncio.Event() for _ in streams]
            readers = [asyncio.create_task(_read(stub(k), s, firsts[k])) for k, s in enumerate(streams)]
            # A fresh session has no event to send yet, so nothing says a stream is open: give
            # them a moment (a stream opened later still reads every event, from seq 1).
            await asyncio.sleep(0.5)
            sent_ns = time.time_ns()
            text = turn_input(count, cfg.interval_ms)
            await asyncio.gather(
                *(
                    stub(k).SendInput(spb.SendInputRequest(session_id=s.session_id, input=text), timeout=30)
                    for k, s in enumerate(streams)
                )
            )
            try:
                await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), cfg.startup_s + END_TIMEOUT_S)
            except TimeoutError:
                started = sum(f.is_set() for f in firsts)
                raise RuntimeError(f"only {started} of {cfg.sessions} sessions streamed a delta") from None
            if silent := [s for s in streams if not s.deltas]:
                raise RuntimeError(
                    f"{len(silent)} sessions ended with no delta, the first by {silent[0].terminal or 'its stream closing'}"
                )
            last_start = max(s.deltas[0][1] for s in streams)
            if last_start - sent_ns > cfg.startup_s * 1e9:
                raise RuntimeError(
                    f"the turns took {(last_start - sent_ns) / 1e9:.1f}s to all start (more than {cfg.startup_s}s)"
                )
            window_start = last_start + int(cfg.warmup_s * 1e9)
            window_end = window_start + int(cfg.measure_s * 1e9)

            await _sleep_until(window_start)
            lags: list[float] = []
            lag_stop = asyncio.Event()
            lag_task = asyncio.create_task(_loop_lag(lags, lag_stop))
            cpu_from, cpu_before = time.time_ns(), _cpu(groups)
            await _sleep_until(window_end)
            cpu_s_elapsed = (time.time_ns() - cpu_from) / 1e9
            cpu = {name: 100 * (sec - cpu_before[name]) / cpu_s_elapsed for name, sec in _cpu(groups).items()}
            lag_stop.set()
            await lag_task

            for w in workers:
                w.send_signal(signal.SIGUSR1)  # the runtime completes its turns (bench/_delta_runtime.py)
            done, pending = await asyncio.wait(readers, timeout=END_TIMEOUT_S)
            for task in done:
                task.result()
        finally:
            for task in readers:
                task.cancel()
            for ch in channels:
                await ch.close()

    measured = [(r, e, n) for s in streams for (r, e, n) in s.deltas if window_start <= e < window_end]
    if not measured:
        raise RuntimeError("no delta was emitted in the measured window")
    received_in_window = sum(1 for s in streams for (r, _, _) in s.deltas if window_start <= r < window_end)
    latency = [(r - e) / 1e6 for (r, e, _) in measured]
    to_cp = [(n - e) / 1e6 for (_, e, n) in measured]
    cp_to_sub = [(r - n) / 1e6 for (r, _, n) in measured]
    return {
        "p50": percentile(latency, 50),
        "p99": percentile(latency, 99),
        "max": max(latency),
        "measured": len(measured),
        "emitted_per_s": len(measured) / cfg.measure_s,
        "received_per_s": received_in_window / cfg.measure_s,
        "missing": sum(s.missing for s in streams),
        "out_of_order": sum(s.out_of_order for s in streams),
        "not_ended": sum(1 for s in streams if s.terminal != "turn_completed"),
        "startup_s": (last_start - sent_ns) / 1e9,
        "to_cp_p50": percentile(to_cp, 50),
        "to_cp_p99": percentile(to_cp, 99),
        "cp_to_sub_p50": percentile(cp_to_sub, 50),
        "cp_to_sub_p99": percentile(cp_to_sub, 99),
        "client_lag_p99": percentile(lags, 99) if lags else 0.0,
        **{f"{name}_cpu_pct": pct for name, pct in cpu.items()},
    }


async def main() -> bool:
    cfg = QUICK if os.environ.get("TETHER_BENCH_QUICK") == "1" else FULL
    if "TETHER_BENCH_SESSIONS" in os.environ:
        cfg = dataclasses.replace(cfg, sessions=int(os.environ["TETHER_BENCH_SESSIONS"]))
    r = await delta_load(cfg)
    common = {
        "sessions": cfg.sessions,
        "workers": cfg.workers,
        "deltas_per_s": round(cfg.sessions * 1000 / cfg.interval_ms),
        "deltas_measured": r["measured"],
        "emitted_per_s": round(r["emitted_per_s"], 1),
        "received_per_s": round(r["received_per_s"], 1),
        "measure_s": cfg.measure_s,
    }
    emit(
        "delta_latency_ms_p50",
        r["p50"],
        "ms",
        **common,
        to_cp_ms_p50=round(r["to_cp_p50"], 3),
        cp_to_subscriber_ms_p50=round(r["cp_to_sub_p50"], 3),
    )
    emit(
        "delta_latency_ms_p99",
        r["p99"],
        "ms",
        **common,
        max_ms=round(r["max"], 3),
        to_cp_ms_p99=round(r["to_cp_p99"], 3),
        cp_to_subscriber_ms_p99=round(r["cp_to_sub_p99"], 3),
        client_lag_ms_p99=round(r["client_lag_p99"], 3),
        cp_cpu_pct=round(r["cp_cpu_pct"], 1),
        workers_cpu_pct=round(r["workers_cpu_pct"], 1),
        client_cpu_pct=round(r["client_cpu_pct"], 1),
        startup_s=round(r["startup_s"], 2),
        load_average=round(os.getloadavg()[0], 2),
    )
    emit("deltas_missing", r["missing"], "deltas", out_of_order=r["out_of_order"], turns_not_ended=r["not_ended"])
    return r["missing"] == 0 and r["out_of_order"] == 0 and r["not_ended"] == 0
