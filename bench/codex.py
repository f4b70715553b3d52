"""codex_turn_overhead_ms_p50: what Tether adds to a Codex turn.

The same turn ("say hi", a streamed text reply from the same mock Responses API on 127.0.0.1)
is run two ways, interleaved one after the other so both see the same machine noise:

- directly: this process drives its own `codex app-server` over stdio (turn/start →
  turn/completed), as an application embedding Codex without Tether would;
- through Tether: SendInput → the turn's terminal event on the session's event stream, with a
  control plane process and a `tether worker --runtime codex` process.

The figure is the median of the per-pair differences (each Tether turn minus the direct turn
run just before it), which cancels the slow drift of a shared machine better than a difference
of two medians; both medians are printed next to it. Both sides use the pinned Codex binary with
the same settings and a fresh CODEX_HOME; the first turns of each (process start, thread start)
are warm-up and not counted.

Where a Tether turn's time goes, on the control plane's clock (the same as this process's
`time.time_ns()`), medians on the figure's line: `to_running_ms_p50` from SendInput to the
turn's `start_time` (when the control plane took the worker's acceptance: the input's commit,
the offer and the AcceptOffer), `running_to_end_ms_p50` from there to the terminal event's
`create_time` (when the control plane numbered it: the grant, Codex's turn read and mapped by the
worker, the StreamEvents hop; compare it with the direct turn), and `end_to_client_ms_p50` from
there to this process reading it (the commit, the fan-out and the stream's hop).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import grpc

from tests.helpers.codex_mock import MockResponses, codex_bin
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc

from ._harness import emit, percentile, procs

TURNS = 100
WARMUP = 3
TERMINAL = {"turn_completed", "turn_failed", "turn_interrupted"}


class DirectCodex:
    """A bare JSON-RPC client of `codex app-server`: the baseline, with nothing of Tether."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.completed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, home: str, cwd: str, mock: MockResponses) -> DirectCodex:
        proc = await asyncio.create_subprocess_exec(
            str(codex_bin()),
            "app-server",
            "-c",
            "features.plugins=false",
            "-c",
            "analytics.enabled=false",
            "-c",
            "check_for_update_on_startup=false",
            "-c",
            'model="mock-model"',
            *(arg for override in mock.codex_config() for arg in ("-c", override)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, "CODEX_HOME": home},
            limit=1 << 26,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            msg = json.loads(line)
            if "id" in msg and "method" not in msg:
                fut = self._waiting.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif msg.get("method") == "turn/completed":
                self.completed.put_nowait(msg["params"])

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        self._send({"id": self._next, "method": method, "params": params})
        async with asyncio.timeout(30):
            msg = await fut
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg["result"]

    async def open_thread(self, cwd: str) -> str:
        await self.call(
            "initialize",
            {"clientInfo": {"name": "bench", "title": None, "version": "0"}, "capabilities": {"experimentalApi": True}},
        )
        self._send({"method": "initialized"})
        result = await self.call("thread/start", {"cwd": cwd, "approvalPolicy": "on-request", "sandbox": "read-only"})
        return result["thread"]["id"]

    async def turn(self, thread_id: str, text: str) -> float:
        t0 = time.perf_counter()
        await self.call(
            "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": text, "text_elements": []}]}
        )
        async with asyncio.timeout(60):
            done = await self.completed.get()
        assert done["turn"]["status"] == "completed", done
        return (time.perf_counter() - t0) * 1000

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
        self._reader.cancel()


async def main() -> bool | None:
    if codex_bin() is None:
        print("codex benchmark skipped: the pinned Codex CLI is not installed (make test installs it with npm)")
        return None
    with MockResponses() as mock, procs() as ps:
        target = ps.control_plane()
        ps.worker(
            target,
            "codex-worker",
            1,
            env={"TETHER_SNAPSHOT_EVERY_TURNS": os.environ.get("TETHER_SNAPSHOT_EVERY_TURNS", "1")},
            extra=(
                *mock.worker_flags(),
                "--codex-sandbox",
                "read-only",
                "--codex-home-from",
                str(ps.tmp / "no-user-home"),
            ),
        )
        home, cwd = ps.tmp / "direct-home", ps.tmp / "direct-work"
        home.mkdir()
        cwd.mkdir()
        direct = await DirectCodex.start(str(home), str(cwd), mock)
        thread_id = await direct.open_thread(str(cwd))
        direct_ms: list[float] = []
        tether_ms: list[float] = []
        phases: dict[str, list[float]] = {"to_running": [], "running_to_end": [], "end_to_client": []}
        async with grpc.aio.insecure_channel(target) as ch:
            stub = sgrpc.SessionServiceStub(ch)
            sid = (await stub.CreateSession(spb.CreateSessionRequest(runtime="codex"), timeout=10)).session.session_id
            stream = stub.StreamSessionEvents(spb.StreamSessionEventsRequest(session_id=sid))
            events = stream.__aiter__()
            for i in range(WARMUP + TURNS):
                text = f"say hi {i}"
                d = await direct.turn(thread_id, text)
                t0 = time.perf_counter()
                sent_ns = time.time_ns()
                sent = await stub.SendInput(spb.SendInputRequest(session_id=sid, input=text), timeout=10)
                ended = ""
                numbered: dict[str, int] = {}  # kind -> when the control plane numbered it
                while not ended:
                    async with asyncio.timeout(60):
                        msg = await events.__anext__()
                    for e in msg.events:
                        kind = e.body.WhichOneof("kind")
                        numbered.setdefault(kind, e.create_time.ToNanoseconds())
                        if kind in TERMINAL:
                            ended = kind
                received_ns = time.time_ns()
                t = (time.perf_counter() - t0) * 1000
                assert ended == "turn_completed", f"turn {i} through Tether ended {ended}"
                if i >= WARMUP:
                    direct_ms.append(d)
                    tether_ms.append(t)
                    turn = await stub.GetTurn(spb.GetTurnRequest(session_id=sid, turn_id=sent.turn.turn_id), timeout=10)
                    running, end = turn.turn.start_time.ToNanoseconds(), numbered[ended]
                    phases["to_running"].append((running - sent_ns) / 1e6)
                    phases["running_to_end"].append((end - running) / 1e6)
                    phases["end_to_client"].append((received_ns - end) / 1e6)
            stream.cancel()
        await direct.close()
        ps.stop_all()
    direct_p50, tether_p50 = percentile(direct_ms, 50), percentile(tether_ms, 50)
    overhead = percentile([t - d for t, d in zip(tether_ms, direct_ms, strict=True)], 50)
    emit(
        "codex_turn_overhead_ms_p50",
        round(overhead, 2),
        "ms",
        turns=len(tether_ms),
        direct_p50_ms=round(direct_p50, 2),
        tether_p50_ms=round(tether_p50, 2),
        **{f"{name}_ms_p50": round(percentile(values, 50), 2) for name, values in phases.items()},
    )
    return None
