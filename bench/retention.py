"""retention_db_growth_mib: how much the database grows under a steady load once idle sessions
are deleted, against the same load with retention off, in the same run.

How the load is made: for DURATION_S, a new shell session every 1/RATE s; each runs one turn
(`echo` of 2 KiB, about 4 events) on one worker and is then left idle. Two control planes run it
one after the other, each on its own SQLite file: one with `--delete-idle-after 4s
--retention-sweep-s 0.5`, one without retention.

How it is measured: the size of the database file plus its WAL (what the database takes on
disk) is read every SAMPLE_S; growth is the size at the end less the size at the end of the
warm-up (WARMUP_S, long enough for the first sessions to pass the idle time). With retention
on, deleted rows' pages are reused by new ones, so the file should stop growing after the
warm-up (target: flat); without it, it grows with every session.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

RATE = 20.0  # sessions per second
DURATION_S = 40.0
WARMUP_S = 15.0
SAMPLE_S = 1.0
IDLE_S = 4
PAD = "z" * 2048


def _size_mib(db: pathlib.Path) -> float:
    total = 0
    for path in (db, db.with_name(db.name + "-wal")):
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total / (1 << 20)


async def _load(target: str, db: pathlib.Path) -> tuple[float, float, int]:
    """Run the load; (MiB at the end of the warm-up, MiB at the end, sessions made)."""
    from tether import sdk

    from ._harness import client_options

    async with sdk.AsyncClient(target, options=client_options()) as client:
        made = 0
        warm = 0.0
        start = time.monotonic()
        pending: set[asyncio.Task[None]] = set()

        async def one(n: int) -> None:
            session = await client.create_session("shell")
            turn = await client.send_input(session.session_id, f"echo {n} {PAD}")
            await client.wait_for_turn(session.session_id, turn.turn_id, timeout_s=60)

        next_sample = start + SAMPLE_S
        while (now := time.monotonic()) - start < DURATION_S:
            task = asyncio.create_task(one(made))
            pending.add(task)
            task.add_done_callback(pending.discard)
            made += 1
            if now >= next_sample:
                next_sample += SAMPLE_S
                if not warm and now - start >= WARMUP_S:
                    warm = _size_mib(db)
            await asyncio.sleep(max(0.0, start + made / RATE - time.monotonic()))
        await asyncio.gather(*pending)
        return warm, _size_mib(db), made


async def main() -> bool:
    from ._harness import emit, procs, wait_connected

    results = {}
    for label, extra in (
        ("on", ("--delete-idle-after", f"{IDLE_S}s", "--retention-sweep-s", "0.5")),
        ("off", ()),
    ):
        with procs() as ps:
            cp = ps.start_control_plane(*extra, db=f"retention-{label}.db")
            ps.worker(cp.target, f"w-{label}", 8)
            await wait_connected(cp.target, [ps.worker_id(f"w-{label}")])
            results[label] = await _load(cp.target, ps.tmp / f"retention-{label}.db")
    warm_on, end_on, made_on = results["on"]
    warm_off, end_off, made_off = results["off"]
    growth_on, growth_off = end_on - warm_on, end_off - warm_off
    emit(
        "retention_db_growth_mib",
        round(growth_on, 2),
        "MiB",
        after_warmup_s=DURATION_S - WARMUP_S,
        sessions=made_on,
        size_mib=round(end_on, 2),
        delete_idle_after_s=IDLE_S,
    )
    emit("retention_off_db_growth_mib", round(growth_off, 2), "MiB", sessions=made_off, size_mib=round(end_off, 2))
    # Flat: under a tenth of what the same load adds without retention (and under 1 MiB).
    ok = growth_on < max(1.0, growth_off / 10)
    emit("retention_db_flat", int(ok), "bool")
    return ok


if __name__ == "__main__":
    asyncio.run(main())
