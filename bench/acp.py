"""acp_turn_overhead_ms_p50: what Tether adds to a turn of an ACP agent.

The same turn ("say hi", a streamed text reply from the same mock Responses API on 127.0.0.1)
is run two ways, interleaved one after the other so both see the same machine noise:

- directly: this process is the ACP client of its own codex-acp over stdio (`session/prompt`
  → its answer, the `session/update` chunks read on the way), as an application embedding the
  agent without Tether would;
- through Tether: SendInput → the turn's terminal event on the session's event stream, with a
  control plane process and a `tether worker --runtime acp` process driving codex-acp.

The figure is the median of the per-pair differences (each Tether turn minus the direct turn
run just before it); both medians are printed next to it. Both sides run the pinned codex-acp
with the same command line and a fresh CODEX_HOME seeded with the same config.toml (the
worker's is the session's carried state directory, snapshotted after every turn as by
default); the first turns of each (process start, session/new) are warm-up and not counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import grpc

from tests.helpers.acp_agent import CODEX_ACP, command, worker_flags, write_seed
from tests.helpers.codex_mock import MockResponses
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc

from ._harness import emit, percentile, procs

TURNS = 100
WARMUP = 3
TERMINAL = {"turn_completed", "turn_failed", "turn_interrupted"}


class DirectAcp:
    """A bare ACP client of codex-acp: the baseline, with nothing of Tether."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.chunks = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, home: str, cwd: str) -> DirectAcp:
        proc = await asyncio.create_subprocess_exec(
            *command(),
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
            elif msg.get("method") == "session/update":
                self.chunks += 1

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._next += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        message = {"jsonrpc": "2.0", "id": self._next, "method": method, "params": params}
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        async with asyncio.timeout(60):
            msg = await fut
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg["result"]

    async def open_session(self, cwd: str) -> str:
        await self.call(
            "initialize",
            {
                "protocolVersion": 1,
                "clientCapabilities": {"fs": {"readTextFile": True, "writeTextFile": True}, "terminal": True},
                "clientInfo": {"name": "bench", "version": "0"},
            },
        )
        return str((await self.call("session/new", {"cwd": cwd, "mcpServers": []}))["sessionId"])

    async def turn(self, session_id: str, text: str) -> float:
        t0 = time.perf_counter()
        result = await self.call(
            "session/prompt", {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}
        )
        assert result["stopReason"] == "end_turn", result
        return (time.perf_counter() - t0) * 1000

    async def close(self) -> None:
        self.proc.kill()  # codex-acp does not exit at the end of its input
        await self.proc.wait()
        self._reader.cancel()


async def main() -> bool | None:
    if CODEX_ACP is None:
        print("acp benchmark skipped: codex-acp is not installed (make test installs it with npm)")
        return None
    with MockResponses() as mock, procs() as ps:
        target = ps.control_plane()
        ps.worker(
            target,
            "acp-worker",
            1,
            env={"TETHER_SNAPSHOT_EVERY_TURNS": os.environ.get("TETHER_SNAPSHOT_EVERY_TURNS", "1")},
            extra=tuple(worker_flags(mock, ps.tmp / "acp-agent")),
        )
        home, cwd = write_seed(mock, ps.tmp / "direct-home"), ps.tmp / "direct-work"
        cwd.mkdir()
        direct = await DirectAcp.start(str(home), str(cwd))
        session_id = await direct.open_session(str(cwd))
        direct_ms: list[float] = []
        tether_ms: list[float] = []
        async with grpc.aio.insecure_channel(target) as ch:
            stub = sgrpc.SessionServiceStub(ch)
            sid = (await stub.CreateSession(spb.CreateSessionRequest(runtime="acp"), timeout=30)).session.session_id
            stream = stub.StreamSessionEvents(spb.StreamSessionEventsRequest(session_id=sid))
            events = stream.__aiter__()
            for i in range(WARMUP + TURNS):
                text = f"say hi {i}"
                d = await direct.turn(session_id, text)
                t0 = time.perf_counter()
                await stub.SendInput(spb.SendInputRequest(session_id=sid, input=text), timeout=30)
                ended = ""
                while not ended:
                    async with asyncio.timeout(60):
                        msg = await events.__anext__()
                    for e in msg.events:
                        kind = e.body.WhichOneof("kind")
                        if kind in TERMINAL:
                            ended = kind
                t = (time.perf_counter() - t0) * 1000
                assert ended == "turn_completed", f"turn {i} through Tether ended {ended}"
                if i >= WARMUP:
                    direct_ms.append(d)
                    tether_ms.append(t)
            stream.cancel()
        await direct.close()
        ps.stop_all()
    direct_p50, tether_p50 = percentile(direct_ms, 50), percentile(tether_ms, 50)
    overhead = percentile([t - d for t, d in zip(tether_ms, direct_ms, strict=True)], 50)
    emit(
        "acp_turn_overhead_ms_p50",
        round(overhead, 2),
        "ms",
        turns=len(tether_ms),
        direct_p50_ms=round(direct_p50, 2),
        tether_p50_ms=round(tether_p50, 2),
    )
    return None
