"""The peer in the same run: Celery + Redis measured beside Tether, interleaved in rounds.

    tether_shell_turn_throughput_tps   Tether's `turns` load (bench/turns.py), median of rounds
    celery_shell_turn_throughput_tps   the same shape on Celery, median of rounds
    turn_throughput_vs_celery          Tether / Celery (target: at least 1.25)
    tether_dispatch_latency_p50_ms     bench/dispatch.py's latency, all rounds' turns pooled
    tether_dispatch_latency_p99_ms
    celery_dispatch_latency_p50_ms     submit → the task starts in a Celery worker, pooled
    celery_dispatch_latency_p99_ms
    dispatch_p50_vs_celery             Tether p50 / Celery p50 (target: at most 1.0)
    cp_cpu_ms_per_turn                 Tether's control plane, utime + stime from /proc over the
                                       throughput window / turns completed in it
    worker_cpu_ms_per_turn             the same for Tether's four worker processes
    tether_granted_shell_turn_throughput_tps, turn_throughput_vs_celery_granted,
    cp_cpu_ms_per_turn_granted         the throughput load again on a control plane started
                                       with --grant-with-offer (off by default: see
                                       docs/operations.md), in the same rounds

Beside the values: each round's, the CPU per turn of the `sh` children the workers reaped and
of this process (the load generator, both sides' clients), the Celery workers' CPU per task,
and Celery's submit → its worker's consumer has the message (`to_consumer_p50_ms`).

Same shape on both sides: 32 clients each wait for their result before sending the next; 4
worker processes with 8 slots each (Celery's threads pool, concurrency 8, prefetch 1); every
task runs `/bin/sh -c true` in a subprocess and returns its output. Each round runs Tether's
throughput, Celery's, Tether's dispatch latency, then Celery's. Tether's side is the existing
benchmark code on a fresh control plane each time, its load started once its workers are
connected; the Celery workers are started once for the run, by this module, and stopped by it
(and stop by themselves if it dies). Both sides then warm up for 1 s before the window.
TETHER_BENCH_CELERY_POOL=prefork runs Celery's prefork pool instead (slower here).

Celery uses the Redis named by TETHER_BENCH_REDIS (default redis://127.0.0.1:6379/13, a
database of its own) and starts no server. A run claims that database with a marker key: it
flushes the database when no other run holds a marker, uses keys under its own prefix, and
deletes them at the end. Without a reachable Redis (or without the `bench` extra) the Celery
figures and the ratios come out with a null value and the reason; the run does not fail.
TETHER_BENCH_QUICK=1 runs one short round (a smoke test).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._footprint import children_cpu_s, cpu_s
from ._harness import Procs, emit, emit_missing, percentile, procs
from .dispatch import dispatch_latencies_ms
from .turns import SESSIONS, SLOTS, WORKERS, turn_load

REDIS_URL = os.environ.get("TETHER_BENCH_REDIS", "redis://127.0.0.1:6379/13")
POOL = os.environ.get("TETHER_BENCH_CELERY_POOL", "threads")  # or prefork
LIVE = "tether-bench:live:"  # a run's marker key: the database is in use
LIVE_TTL_S = 600
WORKER_START_S = 60.0


@dataclass(frozen=True)
class PeerConfig:
    rounds: int
    warmup_s: float
    measure_s: float
    dispatch_turns: int  # per round, each side
    dispatch_warmup: int


FULL = PeerConfig(rounds=3, warmup_s=1.0, measure_s=5.0, dispatch_turns=500, dispatch_warmup=50)
QUICK = PeerConfig(rounds=1, warmup_s=0.5, measure_s=1.0, dispatch_turns=30, dispatch_warmup=5)


@dataclass
class Side:
    """One system's figures, round by round."""

    tps: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    p50_by_round: list[float] = field(default_factory=list)
    receipt_latencies_ms: list[float] = field(default_factory=list)  # Celery: to the consumer
    turns_in_window: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)  # process group -> CPU over windows

    def add_cpu(self, name: str, seconds: float) -> None:
        self.cpu_s[name] = self.cpu_s.get(name, 0.0) + seconds

    def cpu_ms_per_turn(self, name: str) -> float:
        return 1000 * self.cpu_s[name] / self.turns_in_window


# --- Tether: the existing benchmarks, with CPU read over the throughput window ---------------


async def tether_throughput(cfg: PeerConfig, side: Side, *cp_args: str) -> None:
    with procs() as ps:
        cp = ps.start_control_plane(*cp_args)
        assert cp.proc is not None
        cp_proc = cp.proc
        readings: list[dict[str, float]] = []

        def read() -> None:
            workers = [p.pid for p in ps.started if p is not cp_proc]
            readings.append(_cpu({"cp": [cp_proc.pid], "workers": workers, "client": [os.getpid()]}))

        tps, _ = await turn_load(
            [cp.target],
            [cp.target],
            ps,
            warmup_s=cfg.warmup_s,
            measure_s=cfg.measure_s,
            at_window_edge=read,
            connected_first=True,  # as the Celery workers are: started and ready
        )
    _add_window(side, readings, round(tps * cfg.measure_s))
    side.tps.append(tps)


async def tether_dispatch(cfg: PeerConfig, side: Side) -> None:
    with procs() as ps:
        lat = await dispatch_latencies_ms(ps, turns=cfg.dispatch_turns, warmup=cfg.dispatch_warmup)
    side.latencies_ms += lat
    side.p50_by_round.append(percentile(lat, 50))


# --- Celery --------------------------------------------------------------------------------


class CeleryPeer:
    """Four Celery workers of this run, and an app to submit to them."""

    def __init__(self, ps: Procs, app: Any, prefix: str) -> None:
        self.ps = ps
        self.app = app
        self.prefix = prefix
        self.workers: list[int] = []

    def start_workers(self) -> None:
        ready = self.ps.tmp / "celery-ready"
        ready.mkdir()
        env = {
            "TETHER_BENCH_CELERY_URL": REDIS_URL,
            "TETHER_BENCH_CELERY_PREFIX": self.prefix,
            "TETHER_BENCH_CELERY_READY": str(ready),
        }
        procs_ = [
            self.ps.spawn(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "--app",
                    "bench._celery_app",
                    "worker",
                    "--pool",
                    POOL,
                    "--concurrency",
                    str(SLOTS),
                    "--hostname",
                    f"peer{i}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel",
                    "WARNING",
                ],
                f"celery-{i}",
                env,
            )
            for i in range(WORKERS)
        ]
        deadline = time.monotonic() + WORKER_START_S
        while len(list(ready.iterdir())) < WORKERS:
            dead = [i for i, p in enumerate(procs_) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                log = (self.ps.tmp / f"celery-{dead[0] if dead else 0}.log").read_text(errors="replace")
                raise RuntimeError(f"Celery workers did not start: {log[-2000:]}")
            time.sleep(0.05)
        # Each worker process and its pool's processes (prefork forks them before it is ready).
        self.workers = [pid for p in procs_ for pid in (p.pid, *_children(p.pid))]

    def throughput(self, cfg: PeerConfig, side: Side) -> None:
        """SESSIONS clients, each submitting the next task once it has the previous result."""
        from ._celery_app import SHELL_TASK

        completed: list[float] = []
        failures: list[BaseException] = []
        start = threading.Barrier(SESSIONS + 1)
        stop_at = 0.0

        def client() -> None:
            start.wait()
            try:
                while time.monotonic() < stop_at:
                    self.app.send_task(SHELL_TASK).get(timeout=30)
                    completed.append(time.monotonic())
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=client, name=f"celery-client-{k}") for k in range(SESSIONS)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        stop_at = t0 + cfg.warmup_s + cfg.measure_s
        start.wait()
        readings = []
        for at in (t0 + cfg.warmup_s, stop_at):
            time.sleep(max(0.0, at - time.monotonic()))
            readings.append(_cpu({"workers": self.workers, "client": [os.getpid()]}))
        for t in threads:
            t.join()
        if failures:
            raise RuntimeError(f"{len(failures)} Celery clients failed, the first with {failures[0]!r}")
        window = [t for t in completed if t0 + cfg.warmup_s <= t <= stop_at]
        _add_window(side, readings, len(window))
        side.tps.append(len(window) / cfg.measure_s)

    def dispatch(self, cfg: PeerConfig, side: Side) -> None:
        """One task after another; the client's clock before submitting to the worker's clock as
        the task starts (the same CLOCK_MONOTONIC)."""
        from ._celery_app import STAMP_TASK

        lat: list[float] = []
        for k in range(cfg.dispatch_warmup + cfg.dispatch_turns):
            sent = time.monotonic_ns()
            started, received, _ = self.app.send_task(STAMP_TASK).get(timeout=30)
            if k >= cfg.dispatch_warmup:
                lat.append((started - sent) / 1e6)
                if received is not None:
                    side.receipt_latencies_ms.append((received - sent) / 1e6)
        side.latencies_ms += lat
        side.p50_by_round.append(percentile(lat, 50))


@contextlib.contextmanager
def redis_database(url: str) -> Iterator[str]:
    """This run's key prefix in the benchmark's Redis database, its keys deleted afterwards.
    The database is flushed first unless another run holds it."""
    import redis

    r = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    prefix = f"tether-bench:{os.getpid()}-{secrets.token_hex(3)}:"
    if next(r.scan_iter(match=LIVE + "*", count=1000), None) is None:
        r.flushdb()
    r.set(LIVE + prefix, 1, ex=LIVE_TTL_S)
    try:
        yield prefix
    finally:
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.delete(LIVE + prefix)
        r.close()


def unavailable(url: str) -> str | None:
    """Why the Celery side cannot run here, or None."""
    try:
        import celery  # noqa: F401
        import redis
    except ImportError as exc:
        return f"the bench extra is not installed ({exc}); pip install 'tether[bench]'"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {url} is not reachable: {type(exc).__name__}: {exc}"
    return None


# --- the run -------------------------------------------------------------------------------


async def run(cfg: PeerConfig) -> tuple[Side, Side, Side, str | None]:
    """(Tether, Celery, Tether with granted offers, why Celery's figures are missing or None)."""
    tether, peer, granted = Side(), Side(), Side()
    reason = unavailable(REDIS_URL)
    with contextlib.ExitStack() as stack:
        celery: CeleryPeer | None = None
        if reason is None:
            try:
                from ._celery_app import make_app

                prefix = stack.enter_context(redis_database(REDIS_URL))
                celery = CeleryPeer(stack.enter_context(procs()), make_app(REDIS_URL, prefix), prefix)
                celery.start_workers()
            except Exception as exc:
                reason = f"Celery did not start: {type(exc).__name__}: {exc}"
        for _ in range(cfg.rounds):
            await tether_throughput(cfg, tether)
            if celery is not None and reason is None:
                reason = await _attempt(celery.throughput, cfg, peer)
            await tether_throughput(cfg, granted, "--grant-with-offer")
            await tether_dispatch(cfg, tether)
            if celery is not None and reason is None:
                reason = await _attempt(celery.dispatch, cfg, peer)
    return tether, peer, granted, reason


async def _attempt(step: Callable[[PeerConfig, Side], None], cfg: PeerConfig, side: Side) -> str | None:
    """One Celery step, off the event loop (its clients block); why it failed, or None."""
    try:
        await asyncio.to_thread(step, cfg, side)
    except Exception as exc:
        return f"Celery failed mid-run: {type(exc).__name__}: {exc}"
    return None


async def main() -> None:
    cfg = QUICK if os.environ.get("TETHER_BENCH_QUICK") == "1" else FULL
    tether, peer, granted, reason = await run(cfg)
    shape = {"workers": WORKERS, "slots": SLOTS, "sessions": SESSIONS, "rounds": cfg.rounds}

    tps = statistics.median(tether.tps)
    emit("tether_shell_turn_throughput_tps", tps, "turns/s", by_round=_r(tether.tps), **shape)
    p50 = percentile(tether.latencies_ms, 50)
    lat_extra = {"turns": len(tether.latencies_ms), "p50_by_round": _r(tether.p50_by_round)}
    emit("tether_dispatch_latency_p50_ms", p50, "ms", **lat_extra)
    emit("tether_dispatch_latency_p99_ms", percentile(tether.latencies_ms, 99), "ms", **lat_extra)
    per_turn = {"turns": tether.turns_in_window}
    emit("cp_cpu_ms_per_turn", tether.cpu_ms_per_turn("cp"), "ms", **per_turn)
    emit(
        "worker_cpu_ms_per_turn",
        tether.cpu_ms_per_turn("workers"),
        "ms",
        children_ms_per_turn=round(tether.cpu_ms_per_turn("workers_children"), 3),
        client_ms_per_turn=round(tether.cpu_ms_per_turn("client"), 3),
        **per_turn,
    )
    granted_tps = statistics.median(granted.tps)
    emit("tether_granted_shell_turn_throughput_tps", granted_tps, "turns/s", by_round=_r(granted.tps), **shape)
    emit(
        "cp_cpu_ms_per_turn_granted",
        granted.cpu_ms_per_turn("cp"),
        "ms",
        worker_ms_per_turn=round(granted.cpu_ms_per_turn("workers"), 3),
        turns=granted.turns_in_window,
    )

    if reason is not None or not peer.tps or not peer.latencies_ms:
        why = reason or "no Celery round completed"
        for metric, unit in (
            ("celery_shell_turn_throughput_tps", "tasks/s"),
            ("turn_throughput_vs_celery", "ratio"),
            ("turn_throughput_vs_celery_granted", "ratio"),
            ("celery_dispatch_latency_p50_ms", "ms"),
            ("celery_dispatch_latency_p99_ms", "ms"),
            ("dispatch_p50_vs_celery", "ratio"),
        ):
            emit_missing(metric, unit, why)
        return
    peer_tps = statistics.median(peer.tps)
    emit(
        "celery_shell_turn_throughput_tps",
        peer_tps,
        "tasks/s",
        by_round=_r(peer.tps),
        worker_cpu_ms_per_task=round(peer.cpu_ms_per_turn("workers"), 3),
        children_ms_per_task=round(peer.cpu_ms_per_turn("workers_children"), 3),
        client_ms_per_task=round(peer.cpu_ms_per_turn("client"), 3),
        pool=POOL,
        **shape,
    )
    emit("turn_throughput_vs_celery", tps / peer_tps, "ratio")
    emit("turn_throughput_vs_celery_granted", granted_tps / peer_tps, "ratio", policy="--grant-with-offer")
    peer_p50 = percentile(peer.latencies_ms, 50)
    peer_extra: dict[str, object] = {"tasks": len(peer.latencies_ms), "p50_by_round": _r(peer.p50_by_round)}
    if peer.receipt_latencies_ms:  # submit → the message reached the worker's consumer
        peer_extra["to_consumer_p50_ms"] = round(percentile(peer.receipt_latencies_ms, 50), 3)
    emit("celery_dispatch_latency_p50_ms", peer_p50, "ms", **peer_extra)
    emit("celery_dispatch_latency_p99_ms", percentile(peer.latencies_ms, 99), "ms", **peer_extra)
    emit("dispatch_p50_vs_celery", p50 / peer_p50, "ratio")


def _cpu(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each group of processes, and of the children they reaped."""
    out: dict[str, float] = {}
    for name, pids in groups.items():
        out[name] = sum(cpu_s(pid) for pid in pids)
        out[f"{name}_children"] = sum(children_cpu_s(pid) for pid in pids)
    return out


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _add_window(side: Side, readings: list[dict[str, float]], turns: int) -> None:
    before, after = readings
    for name in before:
        side.add_cpu(name, after[name] - before[name])
    side.turns_in_window += turns


def _r(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]
