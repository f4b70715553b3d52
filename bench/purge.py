"""purge_turn_latency_p99_ms: another owner's dispatch latency while PurgeOwnerData deletes
10,000 sessions of one owner, against turn_latency_p99_ms_without_purge in the same run;
purge_turn_latency_ratio is the first over the second (the target is at most 3.0).

How the session set is made: a version-1 bundle (docs/bundles.md) is written here for a shell
session of TURNS ended turns of four events each (input, started, one 64-byte output chunk,
completed). It is imported PURGED times (ImportSession, IN_FLIGHT in flight) under owner
"purged", and KEPT times under owner "local", the owner the --dev control plane gives a caller
without credentials and its workers. One control plane on a fresh SQLite file; building the set
is not part of any figure.

How latency is measured, as bench/dispatch.py measures dispatch_latency_*: one shell worker of
owner "local" (PARALLEL slots, TETHER_OFFER_TRACE) runs a no-op command (`true`) for turns
sent one after another to each of PARALLEL sessions of owner "local", each turn after the
previous one of its session ended (its terminal event on the session's event stream). The
worker records CLOCK_MONOTONIC as each offer reaches it; this process records the same clock
just before each SendInput, so a turn's latency is SendInput → the worker holds the turn. After
WARMUP turns per session, BASELINE turns (in all) run with nothing else going on; then the
purge starts (one PurgeOwnerData "purged" call, as a --dev caller, which is an admin) and the
sessions keep running turns back to back until its stream yields `done`. The purge window's
turns are those sent after the call was made and before `done` arrived: at least
MIN_WINDOW_TURNS are wanted, which is why PARALLEL sessions run (the purge takes a few seconds;
one session alone gets about 160 turns through it). turn_latency_p99_ms_without_purge is the
p99 of the baseline turns sent last, as many as the window holds (all BASELINE when the window
holds more); purge_turn_latency_p99_ms is the p99 of the window turns.

purge_sessions_per_s: PURGED / the purge's wall time (the call to `done`, client monotonic
clock); beside it, the gaps between the purge's progress messages (one per batch, so about
twice a batch's time, with the pause after it). purge_ok must be 1: the purge ended with `done` and PURGED sessions deleted, owner
"purged" has no session left, and every session of owner "local" still exists.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

PURGED = 10_000
KEPT = 200
TURNS = 5
IN_FLIGHT = 48
PARALLEL = 2
WARMUP = 30
BASELINE = 900
MIN_WINDOW_TURNS = 200
PURGE_TIMEOUT_S = 180.0
TERMINAL = {"turn_completed", "turn_failed", "turn_interrupted"}


def make_bundle() -> bytes:
    """A small shell session at rest: TURNS ended turns of four events each."""
    from google.protobuf import json_format
    from google.protobuf.timestamp_pb2 import Timestamp

    from tether.v1 import resources_pb2 as pb

    def as_json(message) -> dict:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    def at(us: int) -> Timestamp:
        stamp = Timestamp()
        stamp.FromMicroseconds(us)
        return stamp

    start = 1_760_000_000_000_000
    session = pb.Session(session_id="ses_BENCHPURGE00000000000000000", runtime="shell", create_time=at(start))
    lines: list[dict] = [{"tether_bundle": 1}, {"session": as_json(session)}]
    events: list[pb.Event] = []
    for n in range(TURNS):
        turn_id = f"trn_PURGE{n:021d}"
        t0 = start + n * 1000
        seq0 = len(events) + 1
        bodies = [
            pb.EventBody(input_received=pb.InputReceived(input=f"echo {n}")),
            pb.EventBody(turn_started=pb.TurnStarted(worker_id="wkr_bench")),
            pb.EventBody(output=pb.OutputChunk(stream=pb.OUTPUT_STREAM_STDOUT, text=f"{n} {'z' * 62}\n")),
            pb.EventBody(turn_completed=pb.TurnCompleted(exit_code=0)),
        ]
        for body in bodies:
            events.append(pb.Event(seq=len(events) + 1, turn_id=turn_id, create_time=at(t0), body=body))
        turn = pb.Turn(
            turn_id=turn_id,
            input=f"echo {n}",
            state=pb.TURN_STATE_COMPLETED,
            create_time=at(t0),
            start_time=at(t0 + 10),
            end_time=at(t0 + 500),
            worker_id="wkr_bench",
            first_seq=seq0,
            last_seq=len(events),
        )
        lines.append({"turn": as_json(turn)})
    lines += [{"event": as_json(e)} for e in events]
    lines.append({"end": {"turns": TURNS, "events": len(events), "requests": 0, "snapshots": 0}})
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


class TurnDriver:
    """Turns sent one after another to one session, each after the previous one ended
    (bench/dispatch.py's loop); `sent` maps each turn id to CLOCK_MONOTONIC before its SendInput."""

    def __init__(self, stub, session_id: str, events) -> None:
        self.stub = stub
        self.session_id = session_id
        self.events = events
        self.sent: dict[str, int] = {}

    async def one(self) -> str:
        from tether.v1 import session_service_pb2 as spb

        t0 = time.monotonic_ns()
        request = spb.SendInputRequest(session_id=self.session_id, input="true")
        turn = (await self.stub.SendInput(request, timeout=30)).turn
        self.sent[turn.turn_id] = t0
        while True:
            msg = await asyncio.wait_for(self.events.__anext__(), 30)
            if any(e.body.WhichOneof("kind") in TERMINAL for e in msg.events):
                return turn.turn_id

    async def run(self, count: int) -> list[str]:
        return [await self.one() for _ in range(count)]


async def main() -> bool:
    import grpc

    from tether import sdk
    from tether.v1 import session_service_pb2 as spb
    from tether.v1 import session_service_pb2_grpc as sgrpc

    from ._harness import client_options, emit, percentile, procs, wait_connected

    bundle = make_bundle()
    with procs() as ps:
        cp = ps.start_control_plane()
        trace = ps.tmp / "offers.trace"
        ps.worker(cp.target, "w0", PARALLEL, env={"TETHER_OFFER_TRACE": str(trace)})
        await wait_connected(cp.target, [ps.worker_id("w0")])
        async with (
            sdk.AsyncClient(cp.target, owner="purged", options=client_options()) as purged,
            sdk.AsyncClient(cp.target, options=client_options()) as local,
        ):
            build_started = time.monotonic()
            sem = asyncio.Semaphore(IN_FLIGHT)

            async def build(client: sdk.AsyncClient) -> str:
                async with sem:
                    return (await client.import_session(bundle, timeout_s=60)).session_id

            await asyncio.gather(*(build(purged) for _ in range(PURGED)))
            kept = set(await asyncio.gather(*(build(local) for _ in range(KEPT))))
            build_s = time.monotonic() - build_started

            async with grpc.aio.insecure_channel(cp.target) as ch:
                stub = sgrpc.SessionServiceStub(ch)
                drivers = []
                for _ in range(PARALLEL):
                    request = spb.CreateSessionRequest(runtime="shell")
                    sid = (await stub.CreateSession(request, timeout=10)).session.session_id
                    kept.add(sid)
                    stream = stub.StreamSessionEvents(spb.StreamSessionEventsRequest(session_id=sid))
                    drivers.append((TurnDriver(stub, sid, stream.__aiter__()), stream))
                await asyncio.gather(*(d.run(WARMUP) for d, _ in drivers))
                baseline = sum(await asyncio.gather(*(d.run(BASELINE // PARALLEL) for d, _ in drivers)), [])

                last: sdk.PurgeProgress | None = None
                done_ns = 0
                progress_ns: list[int] = []  # when each progress message (one a batch) arrived

                async def purge() -> None:
                    nonlocal last, done_ns
                    async for progress in local.purge_owner_data("purged", timeout_s=PURGE_TIMEOUT_S):
                        progress_ns.append(time.monotonic_ns())
                        last = progress
                    done_ns = time.monotonic_ns()

                async def until_purged(driver: TurnDriver) -> list[str]:
                    turn_ids = []
                    while not purging.done():
                        turn_ids.append(await driver.one())
                    return turn_ids

                started_ns = time.monotonic_ns()
                purging = asyncio.create_task(purge())
                during_purge = sum(await asyncio.gather(*(until_purged(d) for d, _ in drivers)), [])
                await purging
                purge_s = (done_ns - started_ns) / 1e9
                for _, stream in drivers:
                    stream.cancel()

            left_purged = [s async for s in purged.iter_sessions(page_size=1000)]
            left_local = {s.session_id async for s in local.iter_sessions(page_size=1000)}
        ps.stop_all()
        received = {}
        for line in trace.read_text().splitlines():
            turn_id, ns = line.split()
            received[turn_id] = int(ns)

    sent = {t: ns for d, _ in drivers for t, ns in d.sent.items()}
    window = [t for t in during_purge if sent[t] < done_ns]
    # The baseline turns nearest the purge, as many as the window holds (all, if it holds more).
    baseline.sort(key=sent.__getitem__)
    before = [(received[t] - sent[t]) / 1e6 for t in baseline[-len(window) :]]
    during = [(received[t] - sent[t]) / 1e6 for t in window]
    p99_during = percentile(during, 99)
    p99_before = percentile(before, 99)
    ok = last is not None and last.done and last.sessions_deleted == PURGED and not left_purged and kept <= left_local
    emit(
        "purge_turn_latency_p99_ms",
        p99_during,
        "ms",
        turns=len(during),
        p50_ms=round(percentile(during, 50), 3),
        max_ms=round(max(during), 3),
    )
    emit(
        "turn_latency_p99_ms_without_purge",
        p99_before,
        "ms",
        turns=len(before),
        p50_ms=round(percentile(before, 50), 3),
        max_ms=round(max(before), 3),
    )
    emit("purge_turn_latency_ratio", p99_during / p99_before, "ratio", target_max=3.0)
    gaps_ms = [(b - a) / 1e6 for a, b in zip([started_ns, *progress_ns], progress_ns, strict=False)]
    emit(
        "purge_sessions_per_s",
        PURGED / purge_s,
        "sessions/s",
        sessions=PURGED,
        events_per_session=TURNS * 4,
        purge_s=round(purge_s, 2),
        progress_messages=len(progress_ns),
        progress_gap_ms_p50=round(percentile(gaps_ms, 50), 2),
        progress_gap_ms_max=round(max(gaps_ms), 2),
        build_s=round(build_s, 1),
    )
    emit("purge_ok", int(ok), "bool", kept_sessions=len(kept), window_turns=len(window))
    if len(window) < MIN_WINDOW_TURNS:
        print(f"purge: only {len(window)} turns fell inside the purge window", file=sys.stderr)
    return ok


if __name__ == "__main__":
    asyncio.run(main())
