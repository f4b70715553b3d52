"""`--log-format json` on `tether serve` and `tether worker`, as real processes: every line on
stderr is one JSON object; the lines about the work name its session, turn, worker and owner;
and no secret the run used (the API key, a made-up key, the pairing code, the worker token, a
bearer header) appears anywhere in either log, at DEBUG. The formatter's own redaction (a
secret a caller did log) is checked in tests/unit/test_logs.py.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import time

import grpc

from tests.helpers.processes import ROOT, eventually, worker_args
from tether import sdk
from tether.execution_worker._credentials import load_credentials
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wpb_grpc

JSON = ["--log-format", "json", "--log-level", "DEBUG"]


class _Process:
    """A child whose stderr (the log) and stdout are kept apart, always reaped."""

    def __init__(self, args: list[str], tmp: pathlib.Path, name: str) -> None:
        self.stderr_path = tmp / f"{name}.stderr"
        self._out = open(tmp / f"{name}.stdout", "wb")
        self._err = open(self.stderr_path, "wb")
        self.popen = subprocess.Popen(args, stdout=self._out, stderr=self._err, cwd=ROOT)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()
        self._err.close()

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _entries(text: str, what: str) -> list[dict[str, str]]:
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{what} line {n} is not JSON: {line!r}") from None
        assert {"time", "level", "logger", "message"} <= entry.keys(), (what, n, entry)
        entries.append(entry)
    assert entries, f"{what} logged nothing"
    return entries


async def test_json_logs_name_the_work_and_never_a_secret(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "tether.db"
    port_file = tmp_path / "cp.port"
    started: list[_Process] = []
    try:
        cp = _Process(
            [
                sys.executable,
                "-m",
                "tether.control_plane",
                "--port",
                "0",
                "--db",
                str(db),
                "--port-file",
                str(port_file),
            ]
            + JSON,
            tmp_path,
            "control-plane",
        )
        started.append(cp)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert cp.popen.poll() is None and time.monotonic() < deadline, cp.log()
            await asyncio.sleep(0.05)
        target = f"127.0.0.1:{port_file.read_text()}"
        key = subprocess.run(
            [sys.executable, "-m", "tether.cli", "keys", "create", "--owner", "alice", "--db", str(db)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            timeout=60,
        ).stdout.strip()
        made_up = "tak_" + "m" * 43

        async with sdk.AsyncClient(target, api_key=key) as alice:
            code = (await alice.create_pairing_code()).code
            workdir = tmp_path / "w"
            worker = _Process(worker_args(target, workdir, 2, "--pairing-code", code, *JSON), tmp_path, "worker")
            started.append(worker)

            async def connected() -> bool:
                return any(w.connected for w in await alice.list_workers())

            await eventually(connected, timeout=30, what="the paired worker connected")
            token = load_credentials(workdir / ".tether" / "token.json")
            assert token is not None
            session = await alice.create_session("shell")
            turn = await alice.send_input(session.session_id, "echo hello")
            done = await alice.wait_for_turn(session.session_id, turn.turn_id, timeout_s=30)
            assert done.state == sdk.TurnState.COMPLETED
            worker_id = done.worker_id

            # Refused credentials: a key never issued, and a worker token on the session API.
            async with sdk.AsyncClient(target, api_key=made_up) as stranger:
                try:
                    await stranger.list_sessions()
                except sdk.UnauthenticatedError:
                    pass
            async with grpc.aio.insecure_channel(target) as channel:
                try:
                    await wpb_grpc.WorkerServiceStub(channel).Register(
                        wpb.RegisterRequest(worker_id="wkr_x", runtimes=["shell"], slots=1),
                        metadata=(("authorization", f"Bearer {key}"),),
                        timeout=5,
                    )
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for p in reversed(started):
            p.stop()

    cp_log, worker_log = cp.log(), worker.log()
    cp_entries, worker_entries = _entries(cp_log, "control plane"), _entries(worker_log, "worker")

    def named(entries: list[dict[str, str]], **ids: str) -> list[dict[str, str]]:
        return [e for e in entries if all(e.get(k) == v for k, v in ids.items())]

    # The control plane's line about the turn names all four; the worker's name its own id,
    # its owner, and the session and turn it accepted.
    assert named(cp_entries, session_id=session.session_id, turn_id=turn.turn_id, owner="alice"), cp_log
    assert named(cp_entries, worker_id=worker_id, owner="alice"), cp_log  # its Lease stream
    assert named(worker_entries, session_id=session.session_id, turn_id=turn.turn_id, worker_id=worker_id)
    assert named(worker_entries, owner="alice", worker_id=worker_id)

    for secret in (key, made_up, code, code.replace("-", ""), token.token, f"Bearer {key}"):
        assert secret not in cp_log, secret[:8]
        assert secret not in worker_log, secret[:8]
