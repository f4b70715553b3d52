"""Cross-owner probe: an attacker owner calls every RPC of every service against a victim
owner's resources, and nothing may leak.

Two owners share one control plane. The victim has a worker, a session with a finished turn
and a snapshot, a turn waiting on an approval (a pending request), a second session whose turn
waits in the queue for a worker labelled pool=shared, a pairing code and a worker token. The
attacker has its own API key, its own worker token and worker (also labelled pool=shared) and
its own session. With its valid credentials the attacker then reads, writes, streams, claims,
resumes, snapshots and answers the victim's resources by their real ids.

A call leaks when it succeeds, or when its answer differs from the answer to the same call
with a made-up id of the same shape (status, reason, message and details, with the id itself
masked): then the caller learnt that the resource exists. The attacker's worker must also
never be offered the victim's queued turn (while it is offered its own), and the victim's
stored rows must be byte-for-byte the same afterwards.

Prints `security_cross_owner_calls` and `security_cross_owner_leaks` (must be 0).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sqlite3
import tempfile

from tether import sdk
from tether.cli.conformance import until
from tether.control_plane import ControlPlane, Settings, Timings
from tether.execution_worker import Worker, WorkerSettings
from tether.execution_worker._credentials import pair

from ._security_calls import Probe, Targets, call_everything

TIMINGS = Timings(
    heartbeat_interval_s=0.2,
    liveness_timeout_s=1.0,
    worker_dead_grace_s=0.5,
    lease_ttl_s=1.5,
    sticky_timeout_s=1.0,
    offer_timeout_s=2.0,
    reconnect_backoff_initial_s=0.05,
    reconnect_backoff_max_s=0.5,
    # The victim's queued turn says why it waits at once, not 2 s later in the middle of the
    # probe, so its stored rows are settled before they are read.
    waiting_notice_s=0.0,
)
_VICTIM_TABLES = {
    "sessions": "session_id",
    "turns": "session_id",
    "events": "session_id",
    "snapshots": "session_id",
    "requests": "session_id",
    "leases": "session_id",
}


def _rows(db: pathlib.Path, session_ids: list[str]) -> dict[str, list[tuple]]:
    """Every stored row of the victim's sessions, and every credential row."""
    conn = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(session_ids))
        out = {
            table: sorted(conn.execute(f"SELECT * FROM {table} WHERE {col} IN ({marks})", session_ids).fetchall())
            for table, col in _VICTIM_TABLES.items()
        }
        for table in ("api_keys", "worker_tokens", "pairing_codes"):
            out[table] = sorted(conn.execute(f"SELECT * FROM {table}").fetchall())
        out["workers"] = sorted(conn.execute("SELECT * FROM workers WHERE owner_id = 'victim'").fetchall())
        return out
    finally:
        conn.close()


async def run_probe(root: pathlib.Path) -> Probe:
    db = root / "security.db"
    async with ControlPlane(Settings(port=0, db=str(db), timings=TIMINGS)) as cp:
        target = f"127.0.0.1:{cp.port}"
        victim_key = await cp.create_api_key("owner", "victim")
        attacker_key = await cp.create_api_key("owner", "attacker")
        victim = sdk.AsyncClient(target, api_key=victim_key)
        attacker = sdk.AsyncClient(target, api_key=attacker_key)
        victim_creds = await pair(target, (await victim.create_pairing_code()).code, "victim-worker")
        attacker_creds = await pair(target, (await attacker.create_pairing_code()).code, "attacker-worker")
        pending_code = await victim.create_pairing_code()  # stays unused: the probe must not see it
        worker = Worker(
            WorkerSettings(
                workdir=root / "victim-worker",
                control_plane=target,
                runtimes=("script",),
                slots=4,
                worker_id=victim_creds.worker_id,
                token=victim_creds.token,
                snapshot_every_turns=0,
            )
        )
        worker_task = asyncio.create_task(worker.run())
        probe = Probe()
        try:
            # The victim's resources.
            done = await victim.create_session("script", labels={"team": "victim"})
            first = await victim.send_input(done.session_id, "say secret-victim-output")
            await until(lambda: _ended(victim, done.session_id, first.turn_id), 20, "the victim's first turn")
            snapshot = await victim.create_snapshot(done.session_id)
            asking = await victim.send_input(done.session_id, "approve rm -rf /victim")
            requests: list[sdk.PendingRequest] = []

            async def opened() -> bool:
                requests[:] = await victim.list_requests(done.session_id)
                return bool(requests)

            await until(opened, 20, "the victim's approval request")
            queued_session = await victim.create_session("script", worker_selector={"pool": "shared"})
            queued = await victim.send_input(queued_session.session_id, "say never-offered-to-the-attacker")

            async def says_why() -> bool:
                events = victim.stream_events(queued_session.session_id, stop_at_end=True)
                return any([e.kind == sdk.EventKind.TURN_WAITING async for e in events])

            # The queued turn says why it waits with a turn_waiting event, committed a moment
            # after the input: the rows are read once it is stored, so only what the probe
            # causes can change them.
            await until(says_why, 20, "the victim's queued turn to say why it waits")
            victim_sessions = [done.session_id, queued_session.session_id]
            before = _rows(db, victim_sessions)

            # The attacker's own session, queued for the shared pool.
            own = await attacker.create_session("script", worker_selector={"pool": "shared"})
            own_turn = await attacker.send_input(own.session_id, "say mine")

            epoch = (await victim.get_session(done.session_id)).lease_epoch
            await call_everything(
                probe,
                target,
                Targets(
                    attacker_key=attacker_key,
                    attacker_token=attacker_creds.token,
                    attacker_worker_id=attacker_creds.worker_id,
                    own_session=own.session_id,
                    own_turn=own_turn.turn_id,
                    session=done.session_id,
                    turn=asking.turn_id,
                    request=requests[0].request_id,
                    lease_epoch=epoch,
                    queued_session=queued_session.session_id,
                    queued_turn=queued.turn_id,
                    worker_id=victim_creds.worker_id,
                    token_id=victim_creds.token_id,
                    snapshot_id=snapshot.snapshot_id,
                ),
            )

            after = _rows(db, victim_sessions)
            for table in before:
                if before[table] != after[table]:
                    probe.leaks.append(f"the victim's {table} rows changed")
            if pending_code.code in str(after) or victim_creds.token in str(after):
                probe.leaks.append("a secret is stored in the clear")
        finally:
            await worker.close()
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
            await victim.close()
            await attacker.close()
    return probe


async def _ended(client: sdk.AsyncClient, session_id: str, turn_id: str) -> bool:
    return (await client.get_turn(session_id, turn_id)).state.name in ("COMPLETED", "FAILED", "INTERRUPTED")


async def main() -> bool:
    with tempfile.TemporaryDirectory(prefix="tether-security-") as tmp:
        probe = await run_probe(pathlib.Path(tmp))
    print(json.dumps({"metric": "security_cross_owner_calls", "value": probe.calls, "unit": "calls"}))
    print(json.dumps({"metric": "security_cross_owner_leaks", "value": len(probe.leaks), "unit": "calls"}))
    for leak in probe.leaks:
        print(f"leak: {leak}", file=__import__("sys").stderr)
    return not probe.leaks
