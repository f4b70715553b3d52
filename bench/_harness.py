"""Processes for benchmarks: a control plane on a fresh SQLite file, workers, bounded runs.

Everything talks over 127.0.0.1 only, every process is killed at the end, and every run is
bounded in count and in time. Only processes started here are ever signalled, by their pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

ROOT = pathlib.Path(__file__).resolve().parent.parent

T = TypeVar("T")


def emit(metric: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def emit_missing(metric: str, unit: str, reason: str) -> None:
    """A figure that could not be measured in this run, and why (its value is null)."""
    print(json.dumps({"metric": metric, "value": None, "unit": unit, "reason": reason}), flush=True)


class ControlPlaneProc:
    """One control plane on one database (a SQLite file or a URL) and one port, which it keeps
    across restarts."""

    def __init__(
        self, procs: Procs, db: pathlib.Path | str, extra: tuple[str, ...], log_level: str, name: str = "control-plane"
    ) -> None:
        self.procs = procs
        self.db = db
        self.extra = extra
        self.log_level = log_level
        self.name = name
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> str:
        """Start it (on its previous port when it had one) and return once it serves."""
        self.starts += 1
        port_file = self.procs.tmp / f"{self.name}-{self.starts}.port"
        self.proc = self.procs.spawn(
            [
                sys.executable,
                "-m",
                "tether.control_plane",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
                "--port-file",
                str(port_file),
                "--log-level",
                self.log_level,
                "--dev",
                *self.extra,
            ],
            self.name,
        )
        deadline = time.monotonic() + timeout_s
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.procs.tmp / f"{self.name}.log").read_text(errors="replace")[-4000:])
            time.sleep(0.01)
        self.port = int(port_file.read_text())
        return self.target

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or released."""
        if self.proc is not None:
            self.procs.kill(self.proc)


class Procs:
    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen] = []

    def spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        log.close()  # the child has its own copy
        self.started.append(p)
        return p

    def control_plane(self, *extra: str) -> str:
        return self.start_control_plane(*extra).target

    def start_control_plane(
        self, *extra: str, log_level: str = "WARNING", db: str = "bench.db", name: str = "control-plane"
    ) -> ControlPlaneProc:
        """`db`: a file name in the bench's directory (SQLite) or a database URL."""
        cp = ControlPlaneProc(self, db if "://" in db else self.tmp / db, extra, log_level, name)
        cp.start()
        return cp

    def worker(
        self,
        target: str,
        name: str,
        slots: int,
        env: dict[str, str] | None = None,
        *,
        extra: tuple[str, ...] = (),
        log_level: str = "warning",
        module: str = "tether.execution_worker",
    ) -> subprocess.Popen:
        """A shell worker whose workdir (and so its stable worker id) is `<tmp>/<name>`."""
        return self.spawn(
            [
                sys.executable,
                "-m",
                module,
                "--control-plane",
                target,
                "--runtime",
                "shell",
                "--workdir",
                str(self.tmp / name),
                "--slots",
                str(slots),
                "--log-level",
                log_level,
                *extra,
            ],
            name,
            env,
        )

    def worker_id(self, name: str, timeout_s: float = 10.0) -> str:
        """The stable id the worker named `name` keeps in its workdir (written at its start)."""
        path = self.tmp / name / ".tether" / "worker_id"
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(FileNotFoundError):
                text = path.read_text().strip()
                if text:
                    return text
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} wrote no id in {timeout_s}s")
            time.sleep(0.02)

    @staticmethod
    def kill(p: subprocess.Popen) -> None:
        """SIGKILL one process started here, and reap it."""
        if p.poll() is None:
            p.kill()
        p.wait()

    def stop_all(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.started:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextlib.contextmanager
def procs(tmp: pathlib.Path | None = None) -> Iterator[Procs]:
    """Processes in `tmp` (default: a fresh temporary directory, removed afterwards)."""
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        ps = Procs(tmp)
        try:
            yield ps
        finally:
            ps.stop_all()
        return
    # A child still flushing a file as it is stopped must not cost a finished run its figures.
    with tempfile.TemporaryDirectory(prefix="tether-bench-", ignore_cleanup_errors=True) as d:
        ps = Procs(pathlib.Path(d))
        try:
            yield ps
        finally:
            ps.stop_all()


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


@functools.cache
def control_plane_flags() -> frozenset[str]:
    """The `--flags` this checkout's `tether serve` accepts (some land while benches are written)."""
    out = subprocess.run(
        [sys.executable, "-m", "tether.control_plane", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    ).stdout
    return frozenset(word.rstrip(",") for word in out.split() if word.startswith("--"))


def cp_timing_args(**flags: float) -> tuple[list[str], list[str]]:
    """`--name value` for each flag this control plane knows; also the names it does not know."""
    known = control_plane_flags()
    args: list[str] = []
    missing: list[str] = []
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if flag in known:
            args += [flag, str(value)]
        else:
            missing.append(flag)
    return args, missing


# SDK clients used by drivers that outlive control-plane restarts: gRPC's own reconnect backoff
# (1 s growing to 120 s) would keep a channel failing long after the server is back.
FAST_RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def client_options() -> tuple[tuple[str, object], ...]:
    import tether.sdk._async_client as ac

    return tuple(ac.DEFAULT_CHANNEL_OPTIONS) + FAST_RECONNECT_OPTIONS


class Retries:
    """Counts of transient failures a driver rode out, by error class name."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def note(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.counts[name] = self.counts.get(name, 0) + 1


def transient(exc: BaseException) -> bool:
    """An SDK error a call may be retried after (with the same idempotency key, for writes)."""
    from tether import sdk

    return isinstance(
        exc, (sdk.UnavailableError, sdk.DeadlineExceededError, sdk.InternalError, sdk.RequestCancelledError)
    )


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    retries: Retries | None = None,
    initial_s: float = 0.05,
    max_s: float = 1.0,
) -> T:
    """`await call()` until it succeeds, retrying transient errors with jittered backoff until
    `deadline` (time.monotonic()); then the last error is raised."""
    delay = initial_s
    while True:
        try:
            return await call()
        except Exception as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
            if retries is not None:
                retries.note(exc)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(max_s, delay * 2)


async def connected_workers(target: str) -> dict[str, object]:
    """worker id -> AdminService WorkerStatus, for the workers whose Lease stream is open."""
    import grpc

    from tether.v1 import admin_service_pb2 as apb
    from tether.v1 import admin_service_pb2_grpc as agrpc

    async with grpc.aio.insecure_channel(target) as ch:
        resp = await agrpc.AdminServiceStub(ch).ListWorkers(apb.ListWorkersRequest(), timeout=5)
    return {w.worker_id: w for w in resp.workers if w.connected}


async def wait_connected(target: str, worker_ids: list[str], timeout_s: float = 30.0) -> None:
    """Return once every worker in `worker_ids` has its Lease stream open."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            up = await connected_workers(target)
        except Exception:
            up = {}
        if all(w in up for w in worker_ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers {sorted(set(worker_ids) - set(up))} not connected after {timeout_s}s")
        await asyncio.sleep(0.05)
