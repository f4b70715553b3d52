"""dispatch_latency_p50_ms / _p99_ms: SendInput → the worker holds the offer, with the turn
durably stored.

One real worker (shell runtime) runs a no-op command; this process sends turns one after
another on one session, each after the previous one completed. The worker records the
CLOCK_MONOTONIC time at which each offer reaches it (TETHER_OFFER_TRACE); this process records
the same clock just before each SendInput. Both are on one machine, so the clocks agree.
SendInput returns only after the turn is committed, and the offer is pushed right after that
commit, so every offer measured was for a durably stored turn.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc

from ._harness import Procs, emit, percentile, procs

TURNS = 1500
WARMUP = 100
TERMINAL = {"turn_completed", "turn_failed", "turn_interrupted"}


async def dispatch_latencies_ms(ps: Procs, *, turns: int = TURNS, warmup: int = WARMUP) -> list[float]:
    """On a fresh control plane and one 1-slot worker in `ps`, `warmup` + `turns` turns one
    after another; the dispatch latency of each of the last `turns`, in ms. Stops every
    process in `ps` before it reads the worker's trace."""
    target = ps.control_plane()
    trace = ps.tmp / "offers.trace"
    ps.worker(target, "w0", 1, env={"TETHER_OFFER_TRACE": str(trace)})
    sent: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as ch:
        stub = sgrpc.SessionServiceStub(ch)
        sid = (await stub.CreateSession(spb.CreateSessionRequest(runtime="shell"), timeout=10)).session.session_id
        stream = stub.StreamSessionEvents(spb.StreamSessionEventsRequest(session_id=sid))
        events = stream.__aiter__()
        for _ in range(warmup + turns):
            t0 = time.monotonic_ns()
            turn = (await stub.SendInput(spb.SendInputRequest(session_id=sid, input="true"), timeout=10)).turn
            sent[turn.turn_id] = t0
            while True:
                msg = await asyncio.wait_for(events.__anext__(), 30)
                if any(e.body.WhichOneof("kind") in TERMINAL for e in msg.events):
                    break
        stream.cancel()
    ps.stop_all()
    received = {}
    for line in trace.read_text().splitlines():
        turn_id, ns = line.split()
        received[turn_id] = int(ns)
    return [(received[t] - sent[t]) / 1e6 for t in list(sent)[warmup:]]


async def main() -> None:
    with procs() as ps:
        lat_ms = await dispatch_latencies_ms(ps)
    emit("dispatch_latency_p50_ms", percentile(lat_ms, 50), "ms", turns=len(lat_ms))
    emit("dispatch_latency_p99_ms", percentile(lat_ms, 99), "ms", turns=len(lat_ms))
