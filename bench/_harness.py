"""Processes for benchmarks: a control plane on a fresh SQLite file, workers, bounded runs.

Everything talks over 127.0.0.1 only, every process is killed at the end, and every run is
bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent


def emit(metric: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit, **extra}), flush=True)


class Procs:
    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen] = []

    def spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        self.started.append(p)
        return p

    def control_plane(self, *extra: str) -> str:
        port_file = self.tmp / "cp.port"
        self.spawn(
            [sys.executable, "-m", "control_plane", "--port", "0", "--db", str(self.tmp / "bench.db"),
             "--port-file", str(port_file), "--log-level", "WARNING", *extra],
            "control-plane",
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError((self.tmp / "control-plane.log").read_text())
            time.sleep(0.02)
        return f"127.0.0.1:{port_file.read_text()}"

    def worker(self, target: str, name: str, slots: int, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.spawn(
            [sys.executable, "-m", "execution_worker", "--control-plane", target, "--runtime", "shell",
             "--workdir", str(self.tmp / name), "--slots", str(slots), "--log-level", "warning"],
            name,
            env,
        )

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
def procs() -> Iterator[Procs]:
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as d:
        ps = Procs(pathlib.Path(d))
        try:
            yield ps
        finally:
            ps.stop_all()


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]
