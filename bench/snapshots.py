"""snapshot_delta_vs_whole_cp_cpu: what an after-turn snapshot of a long session costs when it
sends its whole history, against one that sends only the items after the stored snapshot
(SnapshotRequest.base_snapshot_id).

How: one control plane process (SQLite, as `tether serve` runs by default) and a scripted
worker in this process that holds one session's lease, so the figure is the control plane's
and the upload's, with no runtime in it. The session's history holds ITEMS items of about 90
bytes (a long agent session; Codex's are often longer). Each round uploads one snapshot that
adds 2 items (a turn's input and output) to the history, alternating: a whole one (every item,
converted from the worker's items to protobuf as the worker does, in chunks of 500) and a delta
(the 2 new items, naming the latest stored snapshot as its base). The control plane's CPU is
read from /proc around each block of rounds of one kind, and each upload is timed from the
first conversion to the answer.

Figures:
- snapshot_whole_ms_p50 / snapshot_delta_ms_p50: the upload's wall time;
- snapshot_cp_cpu_ms_whole / snapshot_cp_cpu_ms_delta: the control plane's CPU per snapshot;
- snapshot_delta_vs_whole_cp_cpu: their ratio (lower is better).

The run checks that the last stored snapshot holds the whole history in order (a delta that
lost or reordered items would make it fail).
"""

from __future__ import annotations

import time

ITEMS = 5_000
ROUNDS = 40  # per kind
BLOCK = 5  # rounds of one kind between CPU readings
CHUNK = 500


async def main() -> bool:
    from tests.helpers.fake_worker import FakeWorker, completed, output, started
    from tether import sdk
    from tether.execution_worker._convert import history_to_proto
    from tether.execution_worker.runtime import HistoryItem, HistoryRole
    from tether.v1 import worker_service_pb2 as wpb

    from ._footprint import cpu_s
    from ._harness import client_options, emit, percentile, procs

    with procs() as ps:
        cp = ps.start_control_plane()
        assert cp.proc is not None
        pid = cp.proc.pid
        w = FakeWorker(cp.target, "wkr_snap")
        registered = await w.register()
        if not registered.snapshot_deltas:
            raise RuntimeError("the control plane does not offer snapshot deltas")
        await w.open_lease()
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:
            sid = (await client.create_session("shell")).session_id
            turn = await client.send_input(sid, "build")
            epoch = (await w.take_offer()).lease_epoch
            leases = {sid: epoch}
            w.start_heartbeat(leases)
            await w.write(sid, epoch, [started(1, turn.turn_id, w.worker_id), output(2, turn.turn_id, "x\n")])
            await w.write(sid, epoch, [completed(3, turn.turn_id)])
            seq = (await client.get_session(sid)).last_seq

            pad = "x" * 64
            history = [
                HistoryItem(HistoryRole.INPUT if i % 2 == 0 else HistoryRole.OUTPUT, f"echo {i} {pad}", turn.turn_id)
                for i in range(ITEMS)
            ]

            async def upload(items: list[HistoryItem], base: str) -> str:
                def chunks():
                    head = wpb.SnapshotRequest(
                        worker_id=w.worker_id, session_id=sid, lease_epoch=epoch, seq=seq, base_snapshot_id=base
                    )
                    head.history.extend(history_to_proto(h) for h in items[:CHUNK])
                    yield head
                    for start in range(CHUNK, len(items), CHUNK):
                        yield wpb.SnapshotRequest(history=[history_to_proto(h) for h in items[start : start + CHUNK]])

                return (await w.stub.Snapshot(chunks(), timeout=30)).snapshot_id

            latest = await upload(history, "")
            wall: dict[str, list[float]] = {"whole": [], "delta": []}
            cpu: dict[str, float] = {"whole": 0.0, "delta": 0.0}
            n = 0
            for _ in range(ROUNDS // BLOCK):
                for kind in ("whole", "delta"):
                    before = cpu_s(pid)
                    for _ in range(BLOCK):
                        new = [
                            HistoryItem(HistoryRole.INPUT, f"echo {n} {pad}", turn.turn_id),
                            HistoryItem(HistoryRole.OUTPUT, f"{n} {pad}\n", turn.turn_id),
                        ]
                        n += 1
                        t0 = time.perf_counter()
                        if kind == "whole":
                            history.extend(new)
                            latest = await upload(history, "")
                        else:
                            latest = await upload(new, latest)
                            history.extend(new)
                        wall[kind].append((time.perf_counter() - t0) * 1e3)
                    cpu[kind] += cpu_s(pid) - before
            stored = await client.get_snapshot(sid)
            await w.close()
        if stored.snapshot_id != latest or [h.text for h in stored.history] != [h.text for h in history]:
            raise RuntimeError("the stored snapshot does not hold the whole history in order")

    shape = {"items": ITEMS, "rounds": ROUNDS, "db": "sqlite"}
    for kind in ("whole", "delta"):
        emit(f"snapshot_{kind}_ms_p50", percentile(wall[kind], 50), "ms", **shape)
        emit(f"snapshot_cp_cpu_ms_{kind}", cpu[kind] * 1e3 / ROUNDS, "ms", **shape)
    emit("snapshot_delta_vs_whole_cp_cpu", cpu["delta"] / cpu["whole"], "ratio", **shape)
    return True
