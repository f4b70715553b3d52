"""export_mib_per_s and import_mib_per_s: ExportSession and ImportSession of a 10,000-event
session, in bundle MiB per second of wall time.

How the session is made: a version-1 bundle is written here (docs/bundles.md) for a shell
session of 1,000 ended turns of ten events each (input, started, six 160-byte output chunks, a
completed command item, completed): 10,000 events, about 3.5 MiB of JSON Lines. It is imported
once untimed, which makes the session the export rounds read.

How it is measured: ROUNDS imports of the bundle (each a new session: new ids) and ROUNDS
exports of the first imported session, one after another against one control plane on SQLite,
each timed on the client's monotonic clock from the call to the last byte or the response; the
figures are the medians. The imported session's next turn is then run on a worker that never
saw it (bundle_next_turn_ok must be 1), and an export of it must parse back into the same
number of lines.
"""

from __future__ import annotations

import asyncio
import json
import time

TURNS = 1_000
OUTPUTS = 6
ROUNDS = 5
CHUNK = "y" * 150


def make_bundle() -> bytes:
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
    session = pb.Session(session_id="ses_BENCHBUNDLE0000000000000000", runtime="shell", create_time=at(start))
    lines = [{"tether_bundle": 1}, {"session": as_json(session)}]
    events = []
    for n in range(TURNS):
        turn_id = f"trn_BENCH{n:021d}"
        t0 = start + n * 1000
        seq0 = len(events) + 1
        bodies = [pb.EventBody(input_received=pb.InputReceived(input=f"echo {n}"))]
        bodies.append(pb.EventBody(turn_started=pb.TurnStarted(worker_id="wkr_bench")))
        for i in range(OUTPUTS):
            bodies.append(pb.EventBody(output=pb.OutputChunk(stream=pb.OUTPUT_STREAM_STDOUT, text=f"{i} {CHUNK}\n")))
        item = pb.Item(item_id=f"cmd-{n}", kind=pb.ITEM_KIND_COMMAND_EXECUTION, command=f"echo {n}", status="completed")
        bodies.append(pb.EventBody(item_completed=pb.ItemCompleted(item=item)))
        bodies.append(pb.EventBody(turn_completed=pb.TurnCompleted(exit_code=0)))
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


async def main() -> bool:
    from tether import sdk

    from ._harness import client_options, emit, percentile, procs, wait_connected

    bundle = make_bundle()
    mib = len(bundle) / (1 << 20)
    with procs() as ps:
        cp = ps.start_control_plane()
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:
            first = await client.import_session(bundle)
            imports, exports = [], []
            exported = b""
            for _ in range(ROUNDS):
                t0 = time.monotonic()
                await client.import_session(bundle)
                imports.append(time.monotonic() - t0)
                t0 = time.monotonic()
                exported = b"".join([chunk async for chunk in client.export_session(first.session_id)])
                exports.append(time.monotonic() - t0)
            same_shape = len(exported.splitlines()) == len(bundle.splitlines())
            ps.worker(cp.target, "fresh", 1)
            await wait_connected(cp.target, [ps.worker_id("fresh")])
            turn = await client.send_input(first.session_id, "echo after the import")
            done = await client.wait_for_turn(first.session_id, turn.turn_id, timeout_s=60)
            ok = done.state == sdk.TurnState.COMPLETED and same_shape

    emit(
        "import_mib_per_s",
        round(mib / percentile(imports, 50), 2),
        "MiB/s",
        events=TURNS * (OUTPUTS + 4),
        mib=round(mib, 2),
    )
    emit("export_mib_per_s", round(len(exported) / (1 << 20) / percentile(exports, 50), 2), "MiB/s", rounds=ROUNDS)
    emit("bundle_next_turn_ok", int(ok), "bool")
    return ok


if __name__ == "__main__":
    asyncio.run(main())
