"""The live-delta latency benchmark (`bench/deltas.py`, in `make bench`) in its quick mode: 20
sessions streaming 20 deltas/s each through real workers running the bench's `deltas` runtime;
the figures come out, and every delta a turn yielded arrives, once and in order, before the
turn's completion (the workers end the turns once the window closes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.processes import ROOT


@pytest.mark.timeout(90)
def test_quick_run_measures_delta_latency_and_loses_no_delta():
    with subprocess.Popen(
        [sys.executable, "-m", "bench", "deltas"],
        cwd=ROOT,
        env={**os.environ, "TETHER_BENCH_QUICK": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=70)
        except subprocess.TimeoutExpired:
            proc.terminate()  # its own finally blocks stop the processes it started
            out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err[-3000:]
    figures = {f["metric"]: f for f in map(json.loads, (line for line in out.splitlines() if line.startswith("{")))}
    p50, p99 = figures["delta_latency_ms_p50"], figures["delta_latency_ms_p99"]
    assert 0 < p50["value"] <= p99["value"], (p50, p99)
    assert p99["sessions"] == 20 and p99["deltas_per_s"] == 400, p99
    # Every delta emitted in the window was read (emit times are on the worker's schedule).
    assert p99["deltas_measured"] == pytest.approx(400 * p99["measure_s"], abs=20), p99
    assert figures["deltas_missing"] == {
        "metric": "deltas_missing",
        "value": 0,
        "unit": "deltas",
        "out_of_order": 0,
        "turns_not_ended": 0,
    }
