"""`tether session send --wait` says why a turn waits when no connected worker can take it,
and ends when the control plane fails the turn NO_WORKER after its queue timeout."""

from __future__ import annotations

import asyncio
import dataclasses

from click.testing import CliRunner

from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.sdk.cli import session as session_cli

from ..helpers.processes import FAST


async def test_send_wait_prints_why_the_turn_waits_and_its_no_worker_failure(tmp_path) -> None:
    timings = dataclasses.replace(FAST, queue_timeout_s=1.0, waiting_notice_s=0.2)
    settings = Settings(port=0, db=str(tmp_path / "t.db"), timings=timings, dev_owner="local", migrate=True)
    async with ControlPlane(settings) as cp:
        target = f"127.0.0.1:{cp.port}"
        async with sdk.AsyncClient(target) as client:
            session = await client.create_session(runtime="nosuchruntime")
        result = await asyncio.to_thread(
            CliRunner().invoke, session_cli, ["--control-plane", target, "send", session.session_id, "hi", "--wait"]
        )
    out = result.stdout + result.stderr
    assert "waiting: no connected worker offers runtime 'nosuchruntime'" in out, out
    assert "NO_WORKER" in out, out
    assert result.exit_code != 0
