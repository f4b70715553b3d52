"""The peer benchmark (`bench/peer_celery.py`, in `make bench`) in its quick mode, as `make bench`
runs it: real figures come out for Tether and for Celery on the local Redis, and with no Redis
the Celery figures come out missing, with the reason, and the run still succeeds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.helpers.processes import ROOT

TETHER = [
    "tether_shell_turn_throughput_tps",
    "tether_dispatch_latency_p50_ms",
    "tether_dispatch_latency_p99_ms",
    "cp_cpu_ms_per_turn",
    "worker_cpu_ms_per_turn",
    "tether_granted_shell_turn_throughput_tps",
    "cp_cpu_ms_per_turn_granted",
]
CELERY = [
    "celery_shell_turn_throughput_tps",
    "celery_dispatch_latency_p50_ms",
    "celery_dispatch_latency_p99_ms",
    "turn_throughput_vs_celery",
    "turn_throughput_vs_celery_granted",
    "dispatch_p50_vs_celery",
]
REDIS = "redis://127.0.0.1:6379/13"


@dataclass
class Run:
    pid: int
    returncode: int
    stderr: str
    figures: dict[str, dict]


def run_bench(redis_url: str) -> Run:
    env = {**os.environ, "TETHER_BENCH_QUICK": "1", "TETHER_BENCH_REDIS": redis_url}
    with subprocess.Popen(
        [sys.executable, "-m", "bench", "peer_celery"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=100)
        except subprocess.TimeoutExpired:
            proc.terminate()  # its own finally blocks stop what it started
            out, err = proc.communicate(timeout=20)
    figures = {}
    for line in out.splitlines():
        if line.startswith("{"):
            figure = json.loads(line)
            figures[figure["metric"]] = figure
    return Run(proc.pid, proc.returncode, err, figures)


def redis_unreachable() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=1, socket_timeout=1).ping()
    except Exception as exc:
        return f"no Redis at {REDIS}: {exc}"
    return None


@pytest.mark.timeout(110)
def test_quick_run_measures_tether_and_celery_side_by_side():
    if reason := redis_unreachable():
        pytest.skip(reason)
    run = run_bench(REDIS)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = run.figures
    for metric in TETHER + CELERY:
        value = figures[metric]["value"]
        assert isinstance(value, (int, float)) and value > 0, f"{metric}: {figures[metric]}"
    tps = figures["tether_shell_turn_throughput_tps"]["value"]
    peer_tps = figures["celery_shell_turn_throughput_tps"]["value"]
    assert figures["turn_throughput_vs_celery"]["value"] == pytest.approx(tps / peer_tps, rel=0.01)

    import redis

    # The run's keys (under its prefix, which starts with its pid) and its marker are gone.
    with redis.Redis.from_url(REDIS) as client:
        assert list(client.scan_iter(match=f"tether-bench:{run.pid}-*")) == []
        assert list(client.scan_iter(match=f"tether-bench:live:tether-bench:{run.pid}-*")) == []


@pytest.mark.timeout(110)
def test_without_redis_the_celery_figures_are_missing_with_the_reason_and_the_run_succeeds():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    run = run_bench(f"redis://127.0.0.1:{port}/13")
    assert run.returncode == 0, run.stderr[-3000:]
    for metric in CELERY:
        figure = run.figures[metric]
        assert figure["value"] is None, figure
        assert f"127.0.0.1:{port}" in figure["reason"] and "not reachable" in figure["reason"], figure
    for metric in TETHER:
        assert run.figures[metric]["value"] > 0, run.figures[metric]
