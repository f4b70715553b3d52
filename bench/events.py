"""event_throughput_eps: events/s from a worker through the control plane, stored durably and
delivered to one subscriber.

A producer process writes N output events in batches; this process subscribes to the session
and times the first to the last event it receives. Afterwards the SQLite file is counted to
prove every event was stored.
"""

from __future__ import annotations

import sqlite3
import sys
import time

import grpc

from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc

from ._harness import emit, procs

N_EVENTS = 300_000
BATCH = 1000
TIME_LIMIT_S = 120


async def main() -> None:
    with procs() as ps:
        # One session at full speed is the point here: lift the per-session event rate limit
        # (a policy knob, 2000/s by default), or the producer is throttled, as it should be.
        target = ps.control_plane("--events-per-second-per-session", "1e9")
        async with grpc.aio.insecure_channel(target) as ch:
            stub = sgrpc.SessionServiceStub(ch)
            session = (await stub.CreateSession(spb.CreateSessionRequest(runtime="shell"), timeout=10)).session
            producer = ps.spawn(
                [sys.executable, "-m", "bench._producer", target, str(N_EVENTS), str(BATCH)], "producer"
            )
            await stub.SendInput(spb.SendInputRequest(session_id=session.session_id, input="produce"), timeout=10)
            count, first_t = 0, None
            stream = stub.StreamSessionEvents(
                spb.StreamSessionEventsRequest(session_id=session.session_id), timeout=TIME_LIMIT_S
            )
            async for msg in stream:
                for e in msg.events:
                    kind = e.body.WhichOneof("kind")
                    if kind == "output":
                        if first_t is None:
                            first_t = time.perf_counter()
                        count += 1
                if msg.events and msg.events[-1].body.WhichOneof("kind") == "turn_completed":
                    break
            elapsed = time.perf_counter() - first_t
            stream.cancel()
        producer.wait(30)
        db = sqlite3.connect(ps.tmp / "bench.db")
        stored = db.execute("SELECT count(*) FROM events WHERE session_id = ?", (session.session_id,)).fetchone()[0]
        db.close()
    assert count == N_EVENTS, f"subscriber saw {count} of {N_EVENTS} events"
    assert stored == N_EVENTS + 3, f"{stored} events stored, expected {N_EVENTS + 3}"
    emit("event_throughput_eps", count / elapsed, "events/s", events=N_EVENTS, batch=BATCH)
