"""Fixtures for every tier: databases, real control planes (in-process or as processes), workers.

The helpers they use live in tests/helpers/, which tests import directly."""

from __future__ import annotations

import fcntl
import os
import pathlib
import signal
import subprocess
from collections.abc import AsyncIterator

import pytest

from tether import sdk
from tether.control_plane import ControlPlane, Settings

from .helpers.pg import fresh_database, pg_unreachable_reason
from .helpers.processes import FAST, ROOT, ControlPlaneProcess, Proc


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


TS_DIR = ROOT / "examples" / "typescript"
TSC = ROOT / "node_modules" / ".bin" / "tsc"


@pytest.fixture(scope="session")
def ts_dist() -> pathlib.Path:
    """Compile examples/typescript (and the generated gen/ts it imports) once per test run;
    returns the directory holding the compiled examples (`client.js`, `worker.js`)."""
    if not TSC.exists():
        raise RuntimeError("TypeScript is not installed: run `npm install` (make test does it)")
    # Under pytest-xdist each test process asks: the first compiles while the others wait on
    # the lock, and they then find this run's stamp and use its output, so no process reads a
    # file that another is rewriting.
    dist = TS_DIR / "dist"
    dist.mkdir(exist_ok=True)
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    stamp = dist / ".compiled-for-run"
    with open(dist / ".compile.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not run or not stamp.exists() or stamp.read_text() != run:
            done = subprocess.run([str(TSC), "-p", str(TS_DIR)], cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError("tsc failed:\n" + done.stdout + done.stderr)
            stamp.write_text(run)
    return dist / "examples" / "typescript"
