"""Each runtime declares how its sessions move (`Portability`), and the control plane holds the
worker to it: `ListWorkers` shows the declarations; a `none` session that has run on a worker
is never moved (RestoreSession refuses; after its worker is gone the next turn fails
RUNTIME_NOT_PORTABLE and no other worker starts it); a `state` runtime gets its snapshot's
metadata back before it starts elsewhere, and one that cannot use it fails closed."""

from __future__ import annotations

import asyncio
import pathlib
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import eventually
from tether import sdk
from tether.execution_worker import Portability, ShellRuntime, Worker, WorkerSettings, declaring_portability


@declaring_portability(Portability.NONE)
class Pinned(ShellRuntime):
    """The shell runtime, declaring that its sessions cannot move; records where it started."""

    started: list[tuple[str, int]] = []

    async def start(self, session_id: str, workdir: Path, history: list) -> None:  # type: ignore[override]
        Pinned.started.append((str(workdir), len(history)))
        await super().start(session_id, workdir, history)


class Stateful(ShellRuntime):
    """The shell runtime carrying a counter of its own in each snapshot (`Portability.STATE`)."""

    portability = Portability.STATE
    restored: list[dict[str, Any]] = []
    refuse = False

    def __init__(self) -> None:
        super().__init__()
        self.turns = 0

    def runtime_metadata(self) -> dict[str, Any]:
        return {**super().runtime_metadata(), "turns_here": self.turns}

    def restore_state(self, state: dict[str, Any]) -> None:
        Stateful.restored.append(state)
        if Stateful.refuse:
            raise ValueError("no turns_here in the snapshot: cannot continue")
        self.turns = int(state.get("turns_here", 0))

    def run_turn(self, turn_id: str, input: str):  # type: ignore[no-untyped-def]
        self.turns += 1
        return super().run_turn(turn_id, input)


RUNTIMES = {"shell": ShellRuntime, "pinned": Pinned, "stateful": Stateful}


async def _turn(client: sdk.AsyncClient, session_id: str, command: str) -> sdk.Turn:
    turn = await client.send_input(session_id, command)
    return await client.wait_for_turn(session_id, turn.turn_id, timeout_s=20)


def _workers(target: str, tmp_path: pathlib.Path) -> list[Worker]:
    return [Worker(WorkerSettings(workdir=tmp_path / n, control_plane=target, name=n), runtimes=RUNTIMES) for n in "ab"]


async def test_list_workers_shows_each_runtimes_declared_portability(control_plane, client, tmp_path) -> None:
    [worker, _] = _workers(f"127.0.0.1:{control_plane.port}", tmp_path)
    running = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: worker.connected, timeout=10, what="worker connected")
        [status] = await client.list_workers()
        assert status.runtime_portability == {"pinned": "none", "shell": "history", "stateful": "state"}
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_none_session_stays_on_its_worker_and_fails_closed_once_that_worker_is_gone(
    control_plane, client, tmp_path
) -> None:
    workers = _workers(f"127.0.0.1:{control_plane.port}", tmp_path)
    running = [asyncio.create_task(w.run()) for w in workers]
    Pinned.started.clear()
    try:
        await eventually(lambda: all(w.connected for w in workers), timeout=10, what="both workers connected")
        # A session that has not run anywhere yet may go anywhere.
        fresh = (await client.create_session("pinned")).session_id
        sid = (await client.create_session("pinned")).session_id
        assert (await _turn(client, sid, "echo one")).state == sdk.TurnState.COMPLETED
        holder = (await client.get_session(sid)).worker_id

        with pytest.raises(sdk.FailedPreconditionError) as refused:
            await client.restore_session(sid, timeout_s=20)
        assert refused.value.reason == "RUNTIME_NOT_PORTABLE"
        assert "portability none" in refused.value.message
        assert (await client.get_session(sid)).worker_id == holder  # nothing moved
        assert (await _turn(client, sid, "echo two")).state == sdk.TurnState.COMPLETED
        assert (await client.get_session(sid)).worker_id == holder

        # Its worker goes away (it drains, so the lease is released at once): the next turn
        # fails with the reason, and the other worker never starts the runtime for it.
        gone = next(w for w in workers if w.worker_id == holder)
        other = next(w for w in workers if w.worker_id != holder)
        await gone.close()
        started_before = list(Pinned.started)
        failed = await _turn(client, sid, "echo three")
        assert failed.state == sdk.TurnState.FAILED
        assert failed.error_message.startswith("RUNTIME_NOT_PORTABLE: runtime 'pinned' declares portability none")
        assert Pinned.started == started_before  # no worker started it on an empty history

        # The session that never ran still goes to the worker that is left.
        assert (await _turn(client, fresh, "echo fresh")).state == sdk.TurnState.COMPLETED
        assert (await client.get_session(fresh)).worker_id == other.worker_id
    finally:
        for w in workers:
            await w.close()
        await asyncio.gather(*running, return_exceptions=True)


async def test_a_state_runtime_gets_its_snapshot_metadata_back_and_fails_closed_when_it_cannot_use_it(
    control_plane, client, tmp_path
) -> None:
    workers = _workers(f"127.0.0.1:{control_plane.port}", tmp_path)
    running = [asyncio.create_task(w.run()) for w in workers]
    Stateful.restored.clear()
    Stateful.refuse = False
    try:
        await eventually(lambda: all(w.connected for w in workers), timeout=10, what="both workers connected")
        sid = (await client.create_session("stateful")).session_id
        for command in ("echo one", "echo two"):
            assert (await _turn(client, sid, command)).state == sdk.TurnState.COMPLETED
        await client.create_snapshot(sid, timeout_s=20)
        assert Stateful.restored == [{}]  # the first worker started it fresh: no snapshot yet

        await client.restore_session(sid, timeout_s=20)  # onto the other worker
        assert Stateful.restored[-1]["turns_here"] == 2  # what the snapshot carried

        Stateful.refuse = True
        with pytest.raises(sdk.RehydrationFailedError) as refused:
            await client.restore_session(sid, timeout_s=20)  # back: this time restore_state raises
        assert "no turns_here in the snapshot" in str(refused.value)
    finally:
        Stateful.refuse = False
        for w in workers:
            await w.close()
        await asyncio.gather(*running, return_exceptions=True)
