"""ts_client_dispatch_latency_p50_ms next to py_client_dispatch_latency_p50_ms: what an
application sees, from the TypeScript example client and from the Python SDK.

One sample: take the time, call SendInput, stop the clock when the turn's first event after
input_received (turn_started, written by the worker that took the turn) is read from the
session's event stream; the next sample starts after the turn's terminal event. Each client
keeps one stream open on its own session and times every event as it reads it, on its own
monotonic clock (`performance.now()` in Node, `time.perf_counter()` here), so no clocks are
compared across processes.

Both clients talk to the same control plane process and the same Python worker
(`--runtime script`, input `say ping`). The TypeScript client runs in its `bench --paced` mode:
one sample per line on its stdin, one JSON line back. Samples are taken in pairs, TypeScript then
Python on even pairs and Python then TypeScript on odd ones, so both see the same machine noise
and neither always follows the other. `ts_minus_py_dispatch_latency_p50_ms` is the median of the
per-pair differences; the two medians are printed too. The first pairs are warm-up.

Unlike `dispatch_latency_p50_ms` (SendInput → the worker holds the offer, timed in the worker),
this includes the worker's accept, its turn_started write, the commit and the fan-out to the
subscriber: the full path an application waits on before it sees its turn running.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time

from tether import sdk

from ._harness import ROOT, emit, percentile, procs

PAIRS = 1000
WARMUP = 50
TIME_LIMIT_S = 180
INPUT = "say ping"
TS_DIR = ROOT / "examples" / "typescript"
TSC = ROOT / "node_modules" / ".bin" / "tsc"
CLIENT_JS = TS_DIR / "dist" / "examples" / "typescript" / "client.js"


class PythonSide:
    """The Python SDK measured the way client.ts measures itself."""

    def __init__(self, client: sdk.AsyncClient, session_id: str) -> None:
        self.client = client
        self.session_id = session_id
        self.first_at: dict[str, float] = {}
        self.ends: dict[str, asyncio.Future[str]] = {}
        self._reader: asyncio.Task[None] | None = None

    def _end(self, turn_id: str) -> asyncio.Future[str]:
        if turn_id not in self.ends:
            self.ends[turn_id] = asyncio.get_running_loop().create_future()
        return self.ends[turn_id]

    async def start(self) -> None:
        after = (await self.client.get_session(self.session_id)).last_seq
        self._reader = asyncio.create_task(self._follow(after))

    async def _follow(self, after: int) -> None:
        async for event in self.client.stream_events(self.session_id, after_seq=after):
            now = time.perf_counter()
            if event.kind is not sdk.EventKind.INPUT_RECEIVED:
                self.first_at.setdefault(event.turn_id, now)
            if event.is_terminal and not self._end(event.turn_id).done():
                self._end(event.turn_id).set_result(str(event.kind))

    async def sample(self) -> tuple[str, float, str]:
        t0 = time.perf_counter()
        turn = await self.client.send_input(self.session_id, INPUT)
        end = await asyncio.wait_for(self._end(turn.turn_id), 30)
        return turn.turn_id, (self.first_at[turn.turn_id] - t0) * 1000, end

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class TypeScriptSide:
    """`client.js bench --paced`: one sample per line written to it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, target: str, session_id: str) -> TypeScriptSide:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(CLIENT_JS),
            "bench",
            "--control-plane",
            target,
            "--session",
            session_id,
            "--input",
            INPUT,
            "--paced",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        return cls(proc)

    async def sample(self) -> tuple[str, float, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"client.js bench exited with status {await self.proc.wait()}")
        got = json.loads(line)
        return got["turn_id"], got["ms"], got["end"]

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # EOF: the client closes its stream and exits 0
        try:
            status = await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            status = await self.proc.wait()
        if status != 0:
            raise RuntimeError(f"client.js bench exited with status {status}")


def build() -> None:
    """Compile examples/typescript; a figure that cannot be measured is an error, not a skip."""
    if shutil.which("node") is None or not TSC.exists():
        raise RuntimeError("node or TypeScript is not installed: run `npm install` (make bench does it)")
    done = subprocess.run([str(TSC), "-p", str(TS_DIR)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError("tsc failed:\n" + done.stdout + done.stderr)


async def main() -> None:
    build()
    with procs() as ps:
        target = ps.control_plane()
        ps.spawn(
            [
                sys.executable,
                "-m",
                "tether.execution_worker",
                "--control-plane",
                target,
                "--runtime",
                "script",
                "--workdir",
                str(ps.tmp / "w0"),
                "--slots",
                "2",
                "--log-level",
                "warning",
            ],
            "w0",
        )
        ts_ms: list[float] = []
        py_ms: list[float] = []
        async with sdk.AsyncClient(target) as client, asyncio.timeout(TIME_LIMIT_S):
            ts_session = (await client.create_session("script")).session_id
            py_session = (await client.create_session("script")).session_id
            py = PythonSide(client, py_session)
            await py.start()
            ts = await TypeScriptSide.start(target, ts_session)
            try:
                for i in range(WARMUP + PAIRS):
                    order: list[tuple[str, PythonSide | TypeScriptSide]] = [("ts", ts), ("py", py)]
                    if i % 2:
                        order.reverse()
                    pair: dict[str, float] = {}
                    for name, side in order:
                        turn_id, ms, end = await side.sample()
                        if end != "turn_completed":
                            raise RuntimeError(f"{name} turn {turn_id} ended {end}")
                        pair[name] = ms
                    if i >= WARMUP:
                        ts_ms.append(pair["ts"])
                        py_ms.append(pair["py"])
            finally:
                await ts.stop()
                await py.stop()
    diffs = [t - p for t, p in zip(ts_ms, py_ms, strict=True)]
    n = len(diffs)
    emit("ts_client_dispatch_latency_p50_ms", percentile(ts_ms, 50), "ms", turns=n)
    emit("ts_client_dispatch_latency_p99_ms", percentile(ts_ms, 99), "ms", turns=n)
    emit("py_client_dispatch_latency_p50_ms", percentile(py_ms, 50), "ms", turns=n)
    emit("py_client_dispatch_latency_p99_ms", percentile(py_ms, 99), "ms", turns=n)
    emit("ts_minus_py_dispatch_latency_p50_ms", statistics.median(diffs), "ms", pairs=n)
