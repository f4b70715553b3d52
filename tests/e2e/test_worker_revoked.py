"""A worker whose token is revoked mid-stream stops with one line that says what to do (exit
status 3), and logs no traceback on the way: a real `tether serve` and `tether worker`."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from tests.helpers.processes import ROOT, ControlPlaneProcess, eventually, worker_args
from tether import sdk
from tether.execution_worker._credentials import load_credentials


async def test_a_revoked_worker_exits_cleanly_without_a_traceback(tmp_path: pathlib.Path, procs) -> None:
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db", dev=False)
    cp.start()
    try:
        key = subprocess.run(
            [sys.executable, "-m", "tether.cli", "keys", "create", "--owner", "alice", "--db", str(cp.db)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
        async with sdk.AsyncClient(cp.target, api_key=key) as alice:
            code = (await alice.create_pairing_code()).code
            worker = procs(worker_args(cp.target, tmp_path / "w1", 1, "--pairing-code", code), "w1")
            token_file = tmp_path / "w1" / ".tether" / "token.json"
            await eventually(lambda: token_file.exists(), what="the worker to pair")
            session = await alice.create_session("shell")
            turn = await alice.send_input(session.session_id, "echo started; sleep 60")

            async def running() -> bool:
                return (await alice.get_turn(session.session_id, turn.turn_id)).state == sdk.TurnState.RUNNING

            await eventually(running, timeout=20, what="the turn to run on the worker")
            await alice.revoke_worker_token(load_credentials(token_file).token_id)
            await eventually(lambda: worker.popen.poll() is not None, timeout=20, what="the revoked worker to exit")
    finally:
        cp.stop()
    log = worker.output()
    assert worker.popen.returncode == 3, log
    assert "TOKEN_REVOKED" in log and "tether worker pair --code CODE" in log
    assert "Traceback" not in log and "failed unexpectedly" not in log, log
