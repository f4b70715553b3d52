"""Control-plane replicas on PostgreSQL.

    pg_turn_throughput_tps_1_replica    the `turns` load on one replica
    pg_turn_throughput_tps_3_replicas   the same load, in the same run, on three replicas with
                                        workers and clients spread over them
    pg_double_dispatch                  turns that started more than once (must be 0) over a
                                        run on three replicas whose leader is SIGKILLed mid-run

Each figure gets its own fresh database on the PostgreSQL named by TETHER_BENCH_PG (default:
the local trust-auth server on 127.0.0.1:5432), dropped afterwards. Without a reachable
PostgreSQL the figures are not printed and the reason goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator

from ._harness import ControlPlaneProc, Procs, Retries, client_options, emit, procs, retry
from .turns import SESSIONS, SLOTS, WORKERS, turn_load

SERVER = os.environ.get("TETHER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(SERVER + "/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _database() -> AsyncIterator[str]:
    name = f"tether_bench_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield SERVER.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _replicas(ps: Procs, url: str, n: int) -> list[ControlPlaneProc]:
    return [
        ps.start_control_plane("--replica-id", f"r{i}", *(["--migrate"] if i == 0 else []), db=url, name=f"replica-{i}")
        for i in range(n)
    ]


def _target(cps: list[ControlPlaneProc], first: int) -> str:
    """Every replica, `first` tried first: what a client behind a load balancer sees."""
    order = cps[first:] + cps[:first]
    return "ipv4:" + ",".join(cp.target for cp in order)


async def _throughput(n: int) -> tuple[float, int]:
    async with _database() as url:
        with procs() as ps:
            cps = _replicas(ps, url, n)
            targets = [_target(cps, i) for i in range(n)]
            return await turn_load(targets, targets, ps)


async def _kill_leader(ps: Procs, cps: list[ControlPlaneProc], url: str) -> None:
    from tether.control_plane.store._election import current_leader

    leader = await current_leader(url)
    assert leader is not None, "no replica was elected"
    ps.kill(cps[int(leader.replica_id.removeprefix("r"))].proc)


async def _query(url: str, sql: str) -> list:
    import asyncpg

    from tether.control_plane.store._election import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


CHAOS_TURNS_PER_SESSION = 12


async def _drive(client, session_id: str, k: int, deadline: float, retries: Retries) -> None:
    """Turns back to back on one session, riding out the fail-over: each input has an
    idempotency key, so a retried SendInput never stores a second turn."""
    for j in range(CHAOS_TURNS_PER_SESSION):
        turn = await retry(
            lambda j=j: client.send_input(session_id, "sleep 0.05", idempotency_key=f"s{k}-t{j}"),
            deadline=deadline,
            retries=retries,
        )
        # Bounded by the run's deadline; a stream cut by the kill is reopened from the start.
        await retry(
            lambda turn=turn: client.wait_for_turn(
                session_id, turn.turn_id, timeout_s=max(0.1, deadline - time.monotonic())
            ),
            deadline=deadline,
            retries=retries,
        )


async def _double_dispatch() -> tuple[int, int, dict[str, int]]:
    """Turns that started more than once, turns in all, and the transient errors ridden out,
    over a run on three replicas whose leader is SIGKILLed while turns run."""
    from tether import sdk

    async with _database() as url:
        with procs() as ps:
            cps = _replicas(ps, url, 3)
            targets = [_target(cps, i) for i in range(3)]
            for i in range(WORKERS):
                ps.worker(targets[i % 3], f"w{i}", SLOTS)
            clients = [sdk.AsyncClient(t, options=client_options()) for t in targets]
            retries = Retries()
            deadline = time.monotonic() + 120
            try:
                ids = [
                    (await retry(lambda k=k: clients[k % 3].create_session("shell"), deadline=deadline)).session_id
                    for k in range(SESSIONS)
                ]
                runs = [asyncio.create_task(_drive(clients[k % 3], s, k, deadline, retries)) for k, s in enumerate(ids)]
                await asyncio.sleep(2.0)
                await _kill_leader(ps, cps, url)
                await asyncio.gather(*runs)
            finally:
                for c in clients:
                    await c.close()
            twice = await _query(
                url,
                "SELECT turn_id FROM events WHERE kind = 'turn_started' GROUP BY turn_id HAVING count(*) > 1",
            )
            total = await _query(url, "SELECT count(*) AS n FROM turns")
            return len(twice), total[0]["n"], retries.counts


async def main() -> bool | None:
    try:
        await _admin("SELECT 1")
    except Exception as exc:
        print(f"bench pg: skipped, no PostgreSQL at {SERVER} ({exc})", file=sys.stderr)
        return None
    one, one_total = await _throughput(1)
    three, three_total = await _throughput(3)
    emit("pg_turn_throughput_tps_1_replica", one, "turns/s", workers=WORKERS, sessions=SESSIONS, total_turns=one_total)
    emit(
        "pg_turn_throughput_tps_3_replicas",
        three,
        "turns/s",
        workers=WORKERS,
        sessions=SESSIONS,
        total_turns=three_total,
        ratio_to_1_replica=round(three / one, 3) if one else None,
    )
    t0 = time.monotonic()
    twice, turns, rode_out = await _double_dispatch()
    emit(
        "pg_double_dispatch",
        twice,
        "turns",
        turns=turns,
        leader_killed=True,
        errors_ridden_out=rode_out,
        seconds=round(time.monotonic() - t0, 1),
    )
    return twice == 0
