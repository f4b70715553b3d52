"""The TypeScript client `make gen` produces (gen/ts), over the HTTP port, through the transports
a browser page uses: `@connectrpc/connect-web`'s Connect and gRPC-Web transports over fetch
(HTTP/1.1 in Node), and connect-node's Connect and gRPC transports over HTTP/2.

Each run is a real control plane process (`tether serve --http-port 0`) and a real shell worker:
the client reads a missing session's error (code and ErrorInfo reason), creates a session, sends
input and follows the streamed events until the turn ends; what it read is checked against what
the Python SDK reads over gRPC.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import subprocess

import pytest

from tests.helpers.processes import ROOT, ControlPlaneProcess, start_worker, workers_connected
from tether import sdk

TS_DIR = ROOT / "tests" / "e2e" / "http_ts"
TSC = ROOT / "node_modules" / ".bin" / "tsc"
CLIENT_JS = TS_DIR / "dist" / "tests" / "e2e" / "http_ts" / "http_client.js"
HTTP_LINE = re.compile(r"tether HTTP listening on (http://\S+)")


@pytest.fixture(scope="session")
def http_client_js() -> pathlib.Path:
    if not TSC.exists():
        raise RuntimeError("TypeScript is not installed: run `npm install` (make test does it)")
    done = subprocess.run([str(TSC), "-p", str(TS_DIR)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError("tsc failed:\n" + done.stdout + done.stderr)
    return CLIENT_JS


def http_base_url(cp: ControlPlaneProcess) -> str:
    """The HTTP port's URL, from the line `tether serve` prints once it serves."""
    assert cp.proc is not None
    found = HTTP_LINE.search(cp.proc.output())
    assert found, "the control plane did not print its HTTP port:\n" + cp.proc.output()
    return found[1]


@pytest.fixture
def cp_http(tmp_path: pathlib.Path):
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db", extra=["--http-port", "0"])
    cp.start()
    yield cp
    cp.stop()


async def run_client(js: pathlib.Path, *args: str, timeout: float = 60) -> list[dict]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(js), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ)
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"the client did not finish in {timeout}s:\n{out.decode()}{err.decode()}") from None
    assert proc.returncode == 0, f"status {proc.returncode}\n{out.decode()}{err.decode()}"
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.mark.parametrize("transport", ["connect-web", "grpc-web", "connect-h2", "grpc"])
async def test_generated_ts_client_runs_a_turn_over_http(
    transport: str, http_client_js: pathlib.Path, cp_http: ControlPlaneProcess, procs, tmp_path: pathlib.Path
) -> None:
    start_worker(procs, cp_http.target, tmp_path / "w1", "w1")
    await workers_connected(cp_http.target)
    word = f"hello-over-{transport}"
    lines = await run_client(
        http_client_js,
        "turn",
        "--base-url",
        http_base_url(cp_http),
        "--transport",
        transport,
        "--input",
        f"echo {word}",
    )
    steps = {line["step"]: line for line in lines if line["step"] != "event"}
    # A missing session: NOT_FOUND (Connect code 5) with the ErrorInfo reason, as over gRPC.
    assert steps["missing"] == {"step": "missing", "code": 5, "reason": "SESSION_NOT_FOUND"}
    assert steps["end"] == {"step": "end", "kind": "turnCompleted", "exitCode": 0}
    session_id, turn_id = steps["created"]["sessionId"], steps["sent"]["turnId"]
    events = [line for line in lines if line["step"] == "event"]
    assert [e["kind"] for e in events][:2] == ["inputReceived", "turnStarted"]
    assert "".join(e["text"] for e in events) == f"{word}\n"
    # The same log, read over gRPC by the Python SDK: same seqs, same kinds, same turn.
    async with sdk.AsyncClient(cp_http.target) as client:
        read = []
        async for event in client.stream_events(session_id, after_seq=0):
            read.append(event)
            if event.is_terminal:
                break
    assert [e["seq"] for e in events] == [e.seq for e in read]
    assert {e["turnId"] for e in events} == {turn_id} == {e.turn_id for e in read}


async def test_http_port_is_printed_and_answers_with_the_grpc_port(cp_http: ControlPlaneProcess) -> None:
    url = http_base_url(cp_http)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{cp_http.port}")

    def post() -> int:
        import urllib.request

        req = urllib.request.Request(
            f"{url}/tether.v1.AdminService/ListWorkers", data=b"{}", headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status

    assert await asyncio.to_thread(post) == 200
