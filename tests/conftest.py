"""Shared fixtures: real control planes (in-process or as processes), real workers, helpers."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tether import sdk
from tether.control_plane import ControlPlane, Settings, Timings

from .pg import fresh_database, pg_unreachable_reason

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAST = Timings(
    heartbeat_interval_s=0.2,
    liveness_timeout_s=1.0,
    worker_dead_grace_s=0.5,
    lease_ttl_s=1.5,
    sticky_timeout_s=1.0,
    offer_timeout_s=2.0,
    reconnect_backoff_initial_s=0.05,
    reconnect_backoff_max_s=0.5,
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


@pytest.fixture
def procs(tmp_path: pathlib.Path):
    """Start processes that are stopped (SIGKILL if needed) when the test ends."""
    started: list[Proc] = []

    def start(args: list[str], name: str) -> Proc:
        p = Proc(args, tmp_path / f"{name}.log")
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop(signal.SIGTERM, timeout=10)


# Every test that takes a database (`db_url`, or a control plane built on it) runs once on
# SQLite and once on PostgreSQL; the PostgreSQL run is skipped, with the reason shown, only
# when no PostgreSQL answers (see tests/pg.py).
DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    """A fresh database for this test: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "tether.db")
        return
    with fresh_database() as url:
        yield url


def is_postgres(db: str | pathlib.Path) -> bool:
    return str(db).startswith("postgresql")


@pytest.fixture
def cp_process(tmp_path: pathlib.Path, db_url: str):
    cp = ControlPlaneProcess(tmp_path, db_url)
    cp.start()
    yield cp
    cp.stop()


@pytest.fixture
async def control_plane(db_url: str) -> AsyncIterator[ControlPlane]:
    """An in-process control plane on port 0 with short timings on a fresh database."""
    async with ControlPlane(
        Settings(port=0, db=db_url, timings=FAST, max_message_bytes=256 * 1024, dev_owner="local", migrate=True)
    ) as cp:
        yield cp


def pytest_report_header(config: pytest.Config) -> str:
    why = pg_unreachable_reason()
    return "databases: sqlite, " + (f"postgresql SKIPPED: {why}" if why else "postgresql")


@pytest.fixture
async def client(control_plane: ControlPlane) -> AsyncIterator[sdk.AsyncClient]:
    async with sdk.AsyncClient(f"127.0.0.1:{control_plane.port}") as c:
        yield c


def start_worker(procs, target: str, workdir: pathlib.Path, name: str, slots: int = 2, *extra: str) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    return procs(worker_args(target, workdir, slots, *extra), name)


TS_DIR = ROOT / "examples" / "typescript"
TSC = ROOT / "node_modules" / ".bin" / "tsc"


@pytest.fixture(scope="session")
def ts_dist() -> pathlib.Path:
    """Compile examples/typescript (and the generated gen/ts it imports) once per test run;
    returns the directory holding the compiled examples (`client.js`, `worker.js`)."""
    if not TSC.exists():
        raise RuntimeError("TypeScript is not installed: run `npm install` (make test does it)")
    done = subprocess.run([str(TSC), "-p", str(TS_DIR)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("tsc failed:\n" + done.stdout + done.stderr)
    return TS_DIR / "dist" / "examples" / "typescript"
