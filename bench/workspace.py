"""Workspaces that move with their sessions: checkpoint, restore, failover and de-duplication.

One control plane (SQLite, default timings) and shell workers, as processes, with
`--snapshot-every-turns 0` so every checkpoint is one the bench asks for (CreateSnapshot).

- `workspace_checkpoint_ms_p50` / `_p90`: a session's workspace holds 10,000 files of 10 KiB
  (100 MiB, written by the bench into the worker's session directory, then checkpointed once);
  each round a turn appends a line to one file, then CreateSnapshot is timed: the worker scans
  the tree (stat only for the unchanged files), uploads what the control plane lacks and sends
  the manifest; the call returns once the snapshot and its checkpoint are stored.
  `workspace_checkpoint_bytes_sent_max`: the most blob bytes one such round stored (the changed
  file plus the manifest chunk that lists it; the blobs table's growth), beside
  `workspace_checkpoint_changed_file_bytes`, the changed file's size;
  `workspace_checkpoint_initial_s`: the first checkpoint of the 100 MiB.
- `workspace_restore_100mib_s`: RestoreSession onto a worker with an empty workdir: it downloads
  and writes the 100 MiB, starts the runtime, and confirms with a snapshot at the new epoch.
  The disk is synced first (`os.sync`), as before each failover round, so what earlier steps
  left to write back is not timed with it.
- `failover_100mib_workspace_ms_p50` / `_max`: the session's worker is SIGKILLed; from the kill
  to the stored turn_started of the next turn on a fresh worker (empty workdir) that restored
  the 100 MiB first (3 rounds, each onto a new worker).
- `workspace_dedup_ratio`: another session, 1,000 files of 10 KiB; 20 checkpoints, each after a
  turn that appends to two files and adds one; the checkpoints' logical bytes (the sum of their
  total bytes) over the blob bytes stored for them.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import sqlite3
import time

from tether import sdk

from ._harness import client_options, emit, percentile, procs, wait_connected

FILES = 10_000
FILE_BYTES = 10 * 1024
ROUNDS = 10
FAILOVERS = 3
DEDUP_FILES = 1_000
DEDUP_CHECKPOINTS = 20
TIMEOUT_S = 120


def _write_tree(root: pathlib.Path, files: int) -> None:
    for i in range(files):
        d = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(FILE_BYTES))


def _stored_bytes(db: pathlib.Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0])


def _logical_bytes(db: pathlib.Path, session_id: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT SUM(total_bytes) FROM workspace_checkpoints WHERE session_id = ?", (session_id,))
        return int(row.fetchone()[0] or 0)


async def _turn(client: sdk.AsyncClient, session_id: str, command: str) -> sdk.Turn:
    t = await client.send_input(session_id, command)
    done = await client.wait_for_turn(session_id, t.turn_id, timeout_s=TIMEOUT_S)
    if done.state != sdk.TurnState.COMPLETED:
        raise RuntimeError(f"turn {command!r} ended {done.state}: {done.error_message}")
    return done


async def _first_started(client: sdk.AsyncClient, session_id: str, turn_id: str, after: int) -> sdk.Event:
    async for e in client.stream_events(session_id, after_seq=after, timeout_s=TIMEOUT_S):
        if e.turn_id == turn_id and e.kind == sdk.EventKind.TURN_STARTED:
            return e
    raise RuntimeError("the event stream ended before the turn started")


async def main() -> bool:
    ok = True
    flags = ("--snapshot-every-turns", "0")
    with procs() as ps:
        cp = ps.start_control_plane()
        db = ps.tmp / "bench.db"
        workers = {"w0": ps.worker(cp.target, "w0", 2, extra=flags)}
        await wait_connected(cp.target, [ps.worker_id("w0")])
        async with sdk.AsyncClient(cp.target, options=client_options()) as client:
            sid = (await client.create_session("shell")).session_id
            holder = (await _turn(client, sid, "true")).worker_id
            root = ps.tmp / "w0" / "sessions" / sid
            await asyncio.to_thread(_write_tree, root, FILES)
            started = time.perf_counter()
            await client.create_snapshot(sid, timeout_s=TIMEOUT_S)
            emit("workspace_checkpoint_initial_s", time.perf_counter() - started, "s", files=FILES, mib=100)

            times: list[float] = []
            sent: list[int] = []
            for r in range(ROUNDS):
                await _turn(client, sid, f"echo round-{r} >> d042/f04242.bin")
                before = _stored_bytes(db)
                started = time.perf_counter()
                await client.create_snapshot(sid, timeout_s=TIMEOUT_S)
                times.append((time.perf_counter() - started) * 1000)
                sent.append(_stored_bytes(db) - before)
            emit("workspace_checkpoint_ms_p50", percentile(times, 50), "ms", files=FILES, changed=1)
            emit("workspace_checkpoint_ms_p90", percentile(times, 90), "ms")
            emit("workspace_checkpoint_bytes_sent_max", max(sent), "bytes")
            changed = (root / "d042" / "f04242.bin").stat().st_size
            emit("workspace_checkpoint_changed_file_bytes", changed, "bytes")
            if max(sent) > 2 * changed + 64 * 1024:
                ok = False
                print(f"# a one-file checkpoint stored {max(sent)} bytes, more than twice the file plus 64 KiB")

            workers["w1"] = ps.worker(cp.target, "w1", 2, extra=flags)
            target = ps.worker_id("w1")
            await wait_connected(cp.target, [target])
            # Earlier steps left hundreds of MiB to write back (the tree, its staged copy, the
            # database and its WAL): flushed first, so the restore is timed on its own writes.
            await asyncio.to_thread(os.sync)
            started = time.perf_counter()
            await client.restore_session(sid, worker_id=target, timeout_s=TIMEOUT_S)
            emit("workspace_restore_100mib_s", time.perf_counter() - started, "s")
            holder = target

            failover: list[float] = []
            for r in range(FAILOVERS):
                name = f"f{r}"
                workers[name] = ps.worker(cp.target, name, 2, extra=flags)
                fresh = ps.worker_id(name)
                await wait_connected(cp.target, [fresh])
                for other, proc in workers.items():  # only the holder and the fresh worker stay
                    if other != name and ps.worker_id(other) != holder and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                        await asyncio.to_thread(proc.wait)
                cursor = (await client.get_session(sid)).last_seq
                victim = next(p for n, p in workers.items() if ps.worker_id(n) == holder)
                await asyncio.to_thread(os.sync)
                kill_ns = time.time_ns()
                ps.kill(victim)
                nxt = await client.send_input(sid, "cat d042/f04242.bin > /dev/null")
                first = await _first_started(client, sid, nxt.turn_id, cursor)
                failover.append((first.raw.create_time.ToNanoseconds() - kill_ns) / 1e6)
                done = await client.wait_for_turn(sid, nxt.turn_id, timeout_s=TIMEOUT_S)
                if done.state != sdk.TurnState.COMPLETED or done.worker_id != fresh:
                    ok = False
                    print(f"# failover round {r}: the turn ended {done.state} on {done.worker_id}, not on {fresh}")
                holder = fresh
                await client.create_snapshot(sid, timeout_s=TIMEOUT_S)
            emit("failover_100mib_workspace_ms_p50", percentile(failover, 50), "ms", rounds=FAILOVERS)
            emit("failover_100mib_workspace_ms_max", max(failover), "ms")

            dedup = (await client.create_session("shell")).session_id
            placed = await _turn(client, dedup, "true")
            name = next(n for n in workers if ps.worker_id(n) == placed.worker_id)
            await asyncio.to_thread(_write_tree, ps.tmp / name / "sessions" / dedup, DEDUP_FILES)
            before = _stored_bytes(db)
            for k in range(DEDUP_CHECKPOINTS):
                await _turn(
                    client,
                    dedup,
                    f"echo {k} >> d000/f{k:05d}.bin; echo {k} >> d001/f{100 + k:05d}.bin; echo {k} > new-{k}",
                )
                await client.create_snapshot(dedup, timeout_s=TIMEOUT_S)
            stored = _stored_bytes(db) - before
            emit(
                "workspace_dedup_ratio", _logical_bytes(db, dedup) / max(1, stored), "x", checkpoints=DEDUP_CHECKPOINTS
            )
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if asyncio.run(main()) else 1)
