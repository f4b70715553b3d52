"""SendInput's policy through the SDK and the CLI on a real control plane (SQLite and
PostgreSQL) with a real worker whose turns run until released: two clients racing with REJECT
(one turn stored, the other refused SESSION_BUSY), INTERRUPT ending a running turn and running
next, and `tether session send --if-busy`."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner

from tests.helpers.processes import eventually
from tether import sdk
from tether.sdk.cli import session as session_cli


@pytest.fixture
async def held(control_plane, client, start_worker):
    """A session whose first turn is running and stays so until the gate opens."""
    w = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_policy")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    w.registry.gate.clear()
    s = await client.create_session("fake")
    first = await client.send_input(s.session_id, "first")

    async def running() -> bool:
        return (await client.get_turn(s.session_id, first.turn_id)).state == sdk.TurnState.RUNNING

    await eventually(running, timeout=5, what="the first turn running")
    yield w, s.session_id, first
    w.registry.gate.set()


async def test_two_clients_racing_with_reject_store_one_turn(control_plane, client, start_worker):
    w = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_policy")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    w.registry.gate.clear()
    s = await client.create_session("fake")
    target = f"127.0.0.1:{control_plane.port}"
    async with sdk.AsyncClient(target) as a, sdk.AsyncClient(target) as b:
        results = await asyncio.gather(
            a.send_input(s.session_id, "from a", policy=sdk.InputPolicy.REJECT),
            b.send_input(s.session_id, "from b", policy=sdk.InputPolicy.REJECT),
            return_exceptions=True,
        )
    won = [r for r in results if isinstance(r, sdk.Turn)]
    lost = [r for r in results if isinstance(r, sdk.SessionBusyError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert lost[0].reason == "SESSION_BUSY" and won[0].turn_id in str(lost[0])
    assert (await client.get_session(s.session_id)).turn_count == 1
    w.registry.gate.set()


async def test_interrupt_ends_the_running_turn_and_runs_the_new_one_next(client, held):
    w, sid, first = held
    urgent = await client.send_input(sid, "urgent", policy=sdk.InputPolicy.INTERRUPT)
    stopped = await client.wait_for_turn(sid, first.turn_id, timeout_s=10)
    assert stopped.state == sdk.TurnState.INTERRUPTED
    w.registry.gate.set()
    done = await client.wait_for_turn(sid, urgent.turn_id, timeout_s=10)
    assert done.state == sdk.TurnState.COMPLETED


async def test_the_send_command_takes_the_policy(control_plane, client, held):
    _, sid, first = held
    target = f"127.0.0.1:{control_plane.port}"
    refused = await asyncio.to_thread(
        CliRunner().invoke, session_cli, ["--control-plane", target, "send", sid, "again", "--if-busy", "reject"]
    )
    assert refused.exit_code == 1 and "SESSION_BUSY" in refused.stderr and first.turn_id in refused.stderr
    taken = await asyncio.to_thread(
        CliRunner().invoke, session_cli, ["--control-plane", target, "send", sid, "now", "--if-busy", "interrupt"]
    )
    assert taken.exit_code == 0, taken.output
    stopped = await client.wait_for_turn(sid, first.turn_id, timeout_s=10)
    assert stopped.state == sdk.TurnState.INTERRUPTED
    assert (await client.get_turn(sid, taken.stdout.strip())).input == "now"
