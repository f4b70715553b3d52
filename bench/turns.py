"""turn_throughput_tps: short turns completed per second through one control plane with four
workers (shell runtime, command `true`).

Many sessions run turns back to back: each session sends its next input as soon as its
previous turn's terminal event arrives on its event stream. The figure is completed turns
divided by the wall time of the measured window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc

from ._harness import emit, procs, wait_connected

WORKERS = 4
SLOTS = 8
SESSIONS = 32
WARMUP_S = 2.0
MEASURE_S = 8.0
TERMINAL = {"turn_completed", "turn_failed", "turn_interrupted"}


async def turn_load(
    worker_targets: list[str],
    client_targets: list[str],
    ps,
    *,
    sessions: int = SESSIONS,
    warmup_s: float = WARMUP_S,
    measure_s: float = MEASURE_S,
    at_window_edge: Callable[[], None] | None = None,
    connected_first: bool = False,
) -> tuple[float, int]:
    """Run the load: WORKERS workers (worker i dials worker_targets[i % n]), `sessions`
    sessions each driven through client_targets[k % n]. Returns (turns/s, total turns).

    `at_window_edge` is called when the measured window opens and when it closes (to read
    CPU counters over exactly the turns counted). With `connected_first` the load starts once
    every worker has its Lease stream open (one target only), so a slow start on a busy
    machine does not reach into the window."""
    for i in range(WORKERS):
        ps.worker(worker_targets[i % len(worker_targets)], f"w{i}", SLOTS)
    if connected_first:
        await wait_connected(worker_targets[0], [ps.worker_id(f"w{i}") for i in range(WORKERS)])
    channels = [grpc.aio.insecure_channel(t) for t in client_targets]
    try:
        stubs = [sgrpc.SessionServiceStub(ch) for ch in channels]
        ids = [
            (
                await stubs[k % len(stubs)].CreateSession(spb.CreateSessionRequest(runtime="shell"), timeout=10)
            ).session.session_id
            for k in range(sessions)
        ]
        completed: list[float] = []
        failures = 0
        stop_at = time.monotonic() + warmup_s + measure_s

        async def run(stub: sgrpc.SessionServiceStub, session_id: str) -> None:
            nonlocal failures
            stream = stub.StreamSessionEvents(spb.StreamSessionEventsRequest(session_id=session_id))
            events = stream.__aiter__()
            try:
                while time.monotonic() < stop_at:
                    await stub.SendInput(spb.SendInputRequest(session_id=session_id, input="true"), timeout=10)
                    while True:
                        msg = await asyncio.wait_for(events.__anext__(), 30)
                        ends = [e for e in msg.events if e.body.WhichOneof("kind") in TERMINAL]
                        if ends:
                            if ends[-1].body.WhichOneof("kind") != "turn_completed":
                                failures += 1
                            completed.append(time.monotonic())
                            break
            finally:
                stream.cancel()

        async def edges(probe: Callable[[], None]) -> None:
            for at in (t0 + warmup_s, t0 + warmup_s + measure_s):
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                probe()

        t0 = time.monotonic()
        await asyncio.gather(
            *(run(stubs[k % len(stubs)], s) for k, s in enumerate(ids)),
            *([edges(at_window_edge)] if at_window_edge is not None else []),
        )
    finally:
        for ch in channels:
            await ch.close()
    window_start = t0 + warmup_s
    measured = [t for t in completed if window_start <= t <= window_start + measure_s]
    assert failures == 0, f"{failures} turns did not complete"
    return len(measured) / measure_s, len(completed)


async def main() -> None:
    with procs() as ps:
        target = ps.control_plane()
        tps, total = await turn_load([target], [target], ps)
    emit("turn_throughput_tps", tps, "turns/s", workers=WORKERS, sessions=SESSIONS, total_turns=total)
