"""Scheduled deletion and PurgeOwnerData on a real control plane: a deletion scheduled before a
restart happens after it, a cancelled one does not; a purge by the owner's own key or an admin
key removes the owner's sessions, worker tokens (its worker cut off) and pairing codes and
nothing of another owner's, and every other caller is refused."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from click.testing import CliRunner

from tests.helpers.processes import FAST, eventually
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.execution_worker import Worker, WorkerSettings
from tether.execution_worker._credentials import pair
from tether.sdk.cli import session as session_cli


def _settings(db: str) -> Settings:
    return Settings(port=0, db=db, timings=FAST, migrate=True)


async def _exists(client: sdk.AsyncClient, session_id: str) -> bool:
    try:
        await client.get_session(session_id)
        return True
    except sdk.NotFoundError:
        return False


async def test_a_scheduled_deletion_survives_a_restart_and_a_cancelled_one_does_not_happen(db_url):
    settings = Settings(port=0, db=db_url, timings=FAST, dev_owner="local", migrate=True)
    async with ControlPlane(settings) as cp, sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
        doomed = await client.create_session("shell")
        spared = await client.create_session("shell")
        scheduled = await client.delete_session(doomed.session_id, delete_after_s=2)
        assert scheduled is not None and scheduled.delete_time is not None
        assert (await client.get_session(doomed.session_id)).delete_time == scheduled.delete_time
        await client.delete_session(spared.session_id, delete_after_s=2)
        kept = await client.cancel_session_deletion(spared.session_id)
        assert kept.delete_time is None
    # Stopped before the deletion was due; the next control plane carries it out.
    async with ControlPlane(settings) as cp, sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
        assert await _exists(client, doomed.session_id)
        await eventually(lambda: _gone(client, doomed.session_id), timeout=10, what="the scheduled deletion")
        # The sweep adds up what it deleted once its pass ends, a moment after callers see it.
        await eventually(
            lambda: cp.hub is not None and cp.hub._deletions.swept >= 1, timeout=5, what="the sweep's count"
        )
        assert await _exists(client, spared.session_id)
        assert (await client.get_session(spared.session_id)).delete_time is None
        assert cp.hub is not None and cp.hub._deletions.swept == 1

        result = await asyncio.to_thread(
            CliRunner().invoke,
            session_cli,
            ["--control-plane", f"127.0.0.1:{cp.port}", "delete", spared.session_id, "--after", "7d"],
        )
        assert result.exit_code == 0 and "will be deleted at" in result.stdout, result.output
        result = await asyncio.to_thread(
            CliRunner().invoke,
            session_cli,
            ["--control-plane", f"127.0.0.1:{cp.port}", "cancel-deletion", spared.session_id],
        )
        assert result.exit_code == 0 and (await client.get_session(spared.session_id)).delete_time is None


async def _gone(client: sdk.AsyncClient, session_id: str) -> bool:
    return not await _exists(client, session_id)


async def test_a_purge_removes_one_owners_data_and_only_its_owner_or_an_admin_may_run_it(tmp_path: pathlib.Path):
    async with ControlPlane(_settings(str(tmp_path / "t.db"))) as cp:
        target = f"127.0.0.1:{cp.port}"
        alice = sdk.AsyncClient(target, api_key=await cp.create_api_key("owner", "alice"))
        bob = sdk.AsyncClient(target, api_key=await cp.create_api_key("owner", "bob"))
        backend = sdk.AsyncClient(target, api_key=await cp.create_api_key("backend", ""), owner="alice")
        admin = sdk.AsyncClient(target, api_key=await cp.create_api_key("admin", ""))
        creds = await pair(target, (await alice.create_pairing_code()).code, "alice-1")
        await alice.create_pairing_code()  # unused: purged too
        worker = Worker(
            WorkerSettings(
                workdir=tmp_path / "w",
                control_plane=target,
                runtimes=("shell",),
                worker_id=creds.worker_id,
                token=creds.token,
            )
        )
        running = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: worker.connected, timeout=10, what="alice's worker connected")
            sessions = [await alice.create_session("shell") for _ in range(3)]
            turn = await alice.send_input(sessions[0].session_id, "echo before the purge")
            assert (await alice.wait_for_turn(sessions[0].session_id, turn.turn_id, timeout_s=20)).state == (
                sdk.TurnState.COMPLETED
            )
            bobs = await bob.create_session("shell")

            with pytest.raises(sdk.PermissionDeniedError):
                [p async for p in bob.purge_owner_data("alice")]
            with pytest.raises(sdk.PermissionDeniedError):
                [p async for p in backend.purge_owner_data("alice")]
            with pytest.raises(sdk.InvalidArgumentError) as unnamed:
                [p async for p in admin.purge_owner_data()]
            assert "owner" in str(unnamed.value)
            assert len([s async for s in alice.iter_sessions()]) == 3

            steps = [p async for p in alice.purge_owner_data()]

            assert steps[-1].done and steps[-1].sessions_deleted == 3
            assert (steps[-1].worker_tokens_deleted, steps[-1].workers_deleted, steps[-1].pairing_codes_deleted) == (
                1,
                1,
                2,
            )
            assert [s async for s in alice.iter_sessions()] == [] and await alice.list_worker_tokens() == []
            await eventually(lambda: not worker.connected, timeout=10, what="the purged owner's worker cut off")
            assert await _exists(bob, bobs.session_id)
            again = [p async for p in admin.purge_owner_data("alice")]
            assert [p.done for p in again] == [True] and again[0].sessions_deleted == 0
        finally:
            await worker.close()
            await asyncio.gather(running, return_exceptions=True)
            for c in (alice, bob, backend, admin):
                await c.close()
