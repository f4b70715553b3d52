"""What tests at every tier share: the repository root, short timings, waiting for a condition,
and real control-plane and worker processes that are always reaped."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from tether.control_plane import Timings

ROOT = pathlib.Path(__file__).resolve().parents[2]
FAST = Timings(
    heartbeat_interval_s=0.2,
    liveness_timeout_s=1.0,
    worker_dead_grace_s=0.5,
    lease_ttl_s=1.5,
    sticky_timeout_s=1.0,
    offer_timeout_s=2.0,
    reconnect_backoff_initial_s=0.05,
    reconnect_backoff_max_s=0.5,
    deletion_sweep_s=0.2,
)


async def eventually(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll until predicate() is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def workers_connected(target: str, count: int = 1, timeout: float = 30.0) -> None:
    """Wait until `count` workers hold an open lease stream to the control plane at `target`,
    so a turn sent next is offered at once rather than first waiting (and saying so with a
    turn_waiting event) for a worker still starting."""
    from tether import sdk

    async with sdk.AsyncClient(target) as client:

        async def enough() -> bool:
            try:
                return sum(w.connected for w in await client.list_workers()) >= count
            except sdk.UnavailableError:
                return False

        await eventually(enough, timeout=timeout, what=f"{count} connected worker(s)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A child process that is always reaped, with its output kept for failure messages."""

    def __init__(self, args: list[str], log_path: pathlib.Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send_signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class ControlPlaneProcess:
    """`tether serve` as a separate process on a real database: a SQLite file or a URL."""

    def __init__(
        self,
        tmp: pathlib.Path,
        db: pathlib.Path | str,
        port: int = 0,
        extra: list[str] | None = None,
        dev: bool = True,
        migrate: bool | None = None,
    ) -> None:
        """`dev`: let callers without credentials in (`--dev`); False requires keys and tokens.
        `migrate`: pass `--migrate` (default: on PostgreSQL, whose fresh databases start empty)."""
        self.tmp, self.db, self.extra = tmp, db, extra or []
        self.dev = dev
        self.migrate = is_postgres(db) if migrate is None else migrate
        self.port = port
        self.proc: Proc | None = None

    def start(self) -> None:
        port_file = self.tmp / f"cp-{time.monotonic_ns()}.port"
        args = [
            sys.executable,
            "-m",
            "tether.control_plane",
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            "--port-file",
            str(port_file),
            "--lease-ttl-s",
            "3",
            "--heartbeat-interval-s",
            "0.3",
            "--offer-timeout-s",
            "3",
            *(["--dev"] if self.dev else []),
            *(["--migrate"] if self.migrate else []),
            *self.extra,
        ]
        self.proc = Proc(args, self.tmp / "control-plane.log")
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("control plane did not start:\n" + self.proc.output())
            time.sleep(0.02)
        self.port = int(port_file.read_text())

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig)


def worker_args(target: str, workdir: pathlib.Path, slots: int = 2, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tether.execution_worker",
        "--control-plane",
        target,
        "--runtime",
        "shell",
        "--workdir",
        str(workdir),
        "--slots",
        str(slots),
        *extra,
    ]


def start_worker(procs, target: str, workdir: pathlib.Path, name: str, slots: int = 2, *extra: str) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    return procs(worker_args(target, workdir, slots, *extra), name)


def is_postgres(db: str | pathlib.Path) -> bool:
    return str(db).startswith("postgresql")
