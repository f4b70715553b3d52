"""claude_turn_overhead_ms_p50: what Tether adds to a Claude Code turn.

The same turn ("say hi N", a streamed text reply from the same mock Anthropic Messages API on
127.0.0.1) is run two ways, interleaved one after the other so both see the same machine noise:

- directly: this process drives its own `claude -p` over stream-json (a user message → its
  `result` message), as an application embedding Claude Code without Tether would;
- through Tether: SendInput → the turn's terminal event on the session's event stream, with a
  control plane process and a `tether worker --runtime claude` process.

Both sides run the pinned Claude Code with the same command line and environment (the runtime's
own `ClaudeSettings.command` and `.environment`: stream-json both ways, partial messages,
permission prompts over stdio, a config directory of its own, telemetry off). The figure is the
median of the per-pair differences (each Tether turn minus the direct turn run just before it);
both medians are printed next to it. The first turns of each (process start) are warm-up and
not counted.

claude_runtime_overhead_ms_p50 splits that figure: the same pairs with the runtime alone
(`ClaudeRuntime.run_turn` in this process, no control plane, no worker) against the direct
client, so what is left of the first figure is the path every runtime shares (SendInput, the
offer and grant, events shipped, stored and streamed back).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from tests.helpers.anthropic_mock import MODEL, MockAnthropic, claude_bin
from tether.execution_worker._claude import ClaudeRuntime
from tether.execution_worker._claude_settings import ClaudeSettings
from tether.execution_worker.runtime import TurnCompleted
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc

from ._harness import emit, percentile, procs

TURNS = 100
WARMUP = 3
TERMINAL = {"turn_completed", "turn_failed", "turn_interrupted"}


class DirectClaude:
    """A bare stream-json client of `claude -p`: the baseline, with nothing of Tether."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.initialized: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, settings: ClaudeSettings, config: Path, cwd: Path, mock: MockAnthropic) -> DirectClaude:
        proc = await asyncio.create_subprocess_exec(
            *settings.command(str(uuid.uuid4()), resume=False),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=cwd,
            env={**settings.environment(config), **mock.env()},
            limit=1 << 26,
        )
        direct = cls(proc)
        direct._send({"type": "control_request", "request_id": "init", "request": {"subtype": "initialize"}})
        async with asyncio.timeout(30):
            await direct.initialized
        return direct

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("type") == "control_response" and not self.initialized.done():
                self.initialized.set_result(None)
            elif msg.get("type") == "result":
                self.results.put_nowait(msg)

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")

    async def turn(self, text: str) -> float:
        t0 = time.perf_counter()
        self._send({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": text}]}})
        async with asyncio.timeout(60):
            result = await self.results.get()
        assert not result.get("is_error"), result
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
    if claude_bin() is None:
        print("claude benchmark skipped: the pinned Claude Code is not installed (make test installs it with npm)")
        return None
    with MockAnthropic() as mock, procs() as ps:
        target = ps.control_plane()
        ps.worker(
            target,
            "claude-worker",
            1,
            env={**mock.env(), "TETHER_SNAPSHOT_EVERY_TURNS": "1"},
            extra=(
                *mock.worker_flags(),
                "--claude-max-retries",
                "0",
                "--claude-config-from",
                str(ps.tmp / "no-user-config"),
            ),
        )
        settings = ClaudeSettings(
            bin=str(claude_bin()), model=MODEL, max_retries=0, config_from=ps.tmp / "no-user-config"
        )
        config, cwd = ps.tmp / "direct-config", ps.tmp / "direct-work"
        config.mkdir()
        cwd.mkdir()
        direct = await DirectClaude.start(settings, config, cwd, mock)
        direct_ms: list[float] = []
        tether_ms: list[float] = []
        async with grpc.aio.insecure_channel(target) as ch:
            stub = sgrpc.SessionServiceStub(ch)
            sid = (await stub.CreateSession(spb.CreateSessionRequest(runtime="claude"), timeout=10)).session.session_id
            stream = stub.StreamSessionEvents(spb.StreamSessionEventsRequest(session_id=sid))
            events = stream.__aiter__()
            for i in range(WARMUP + TURNS):
                text = f"say hi {i}"
                d = await direct.turn(text)
                t0 = time.perf_counter()
                await stub.SendInput(spb.SendInputRequest(session_id=sid, input=text), timeout=10)
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
        runtime_pairs = await _runtime_pairs(settings, ps.tmp, mock)
        ps.stop_all()
    direct_p50, tether_p50 = percentile(direct_ms, 50), percentile(tether_ms, 50)
    overhead = percentile([t - d for t, d in zip(tether_ms, direct_ms, strict=True)], 50)
    emit(
        "claude_turn_overhead_ms_p50",
        round(overhead, 2),
        "ms",
        turns=len(tether_ms),
        direct_p50_ms=round(direct_p50, 2),
        tether_p50_ms=round(tether_p50, 2),
    )
    emit(
        "claude_runtime_overhead_ms_p50",
        round(percentile([r - d for d, r in runtime_pairs], 50), 2),
        "ms",
        turns=len(runtime_pairs),
    )
    return None


async def _runtime_pairs(settings: ClaudeSettings, tmp: Path, mock: MockAnthropic) -> list[tuple[float, float]]:
    """(direct, runtime-alone) turn times, interleaved, after the warm-up; both conversations
    start empty, as in the first figure."""
    config, cwd = tmp / "direct-config-2", tmp / "direct-work-2"
    config.mkdir()
    cwd.mkdir()
    direct = await DirectClaude.start(settings, config, cwd, mock)
    saved = {key: os.environ.get(key) for key in mock.env()}
    os.environ.update(mock.env())  # the runtime's claude inherits this process's environment
    runtime = ClaudeRuntime(settings)
    try:
        await runtime.start("ses_bench", tmp / "runtime-workdir", [])
        pairs = []
        for i in range(WARMUP + TURNS):
            text = f"say hello {i}"
            if i % 2:  # which goes first alternates: neither side always runs right after the other
                r = await _runtime_turn(runtime, i, text)
                d = await direct.turn(text)
            else:
                d = await direct.turn(text)
                r = await _runtime_turn(runtime, i, text)
            if i >= WARMUP:
                pairs.append((d, r))
        return pairs
    finally:
        await runtime.close()
        await direct.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _runtime_turn(runtime: ClaudeRuntime, i: int, text: str) -> float:
    t0 = time.perf_counter()
    end = None
    async for event in runtime.run_turn(f"trn_{i}", text):
        end = event
    assert isinstance(end, TurnCompleted), end
    return (time.perf_counter() - t0) * 1000
