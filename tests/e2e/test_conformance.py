"""The worker conformance kit (`tether conformance`) against real workers: the Python worker
passes every scenario, and the kit catches a worker that breaks the contract."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from tests.helpers.processes import ROOT
from tether.cli.conformance import SCENARIOS

PY_WORKER = f"{sys.executable} -m tether.execution_worker"


def run_kit(worker_cmd: str, keep: pathlib.Path) -> tuple[int, dict[str, str], str]:
    """Run the kit as a user would; return its exit status, each scenario's verdict line
    (by name) and the whole output."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tether.cli", "conformance", "--worker-cmd", worker_cmd, "--keep", str(keep)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=100,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the kit ran past 100s; its output so far:\n{exc.stdout!r}\n{exc.stderr!r}") from None
    verdicts = {}
    for line in done.stdout.splitlines():
        if m := re.match(r"^(PASS|FAIL) ([a-z-]+)", line):
            verdicts[m.group(2)] = line
    return done.returncode, verdicts, done.stdout + done.stderr


def test_the_python_worker_passes_every_scenario(tmp_path: pathlib.Path) -> None:
    code, verdicts, out = run_kit(PY_WORKER, tmp_path)
    assert code == 0, out
    assert list(verdicts) == [name for name, _ in SCENARIOS], out
    assert all(line.startswith("PASS") for line in verdicts.values()), out
    assert "all 8 scenarios passed" in out


def test_the_typescript_worker_passes_every_scenario(ts_dist: pathlib.Path, tmp_path: pathlib.Path) -> None:
    code, verdicts, out = run_kit(f"node {ts_dist / 'worker.js'}", tmp_path)
    assert code == 0, out
    assert list(verdicts) == [name for name, _ in SCENARIOS], out
    assert all(line.startswith("PASS") for line in verdicts.values()), out


def test_a_worker_that_does_not_let_turns_finish_fails_drain(tmp_path: pathlib.Path) -> None:
    # No drain grace: SIGTERM interrupts the running turn instead of letting it finish.
    code, verdicts, out = run_kit(PY_WORKER + " --drain-grace-s 0", tmp_path)
    assert code == 1, out
    assert verdicts["drain"].startswith("FAIL drain: the running turn ended INTERRUPTED"), out
    failed = [name for name, line in verdicts.items() if line.startswith("FAIL")]
    assert failed == ["drain"], out


def test_a_worker_without_the_script_runtime_fails_registration(tmp_path: pathlib.Path) -> None:
    # It registered, so the skipped scenarios name what is really wrong, and the kit exits 2
    # as its help promises when registration fails.
    code, verdicts, out = run_kit(PY_WORKER + " --runtime shell", tmp_path)
    assert code == 2, out
    why = "the worker offers ['shell'], not the 'script' runtime"
    assert verdicts["register"] == f"FAIL register: {why}", out
    assert all(verdicts[name] == f"FAIL {name}: not run, registration failed: {why}" for name, _ in SCENARIOS[1:]), out
    assert "never registered" not in out, out


def test_a_worker_that_cannot_start_is_reported(tmp_path: pathlib.Path) -> None:
    code, verdicts, out = run_kit(str(tmp_path / "no-such-worker"), tmp_path / "kit")
    assert code == 2, out
    assert "FAIL register: could not start" in verdicts["register"], out
    assert "FAIL offer-accept: not run, registration failed: could not start" in verdicts["offer-accept"], out
    assert "conformance failed; worker logs and the database are in" in out
