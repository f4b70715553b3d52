"""Retention on a real control plane (SQLite and PostgreSQL): an idle session is archived, then
deleted, by the control plane's own sweep; one in use is left; `tether serve` refuses a
retention setting it cannot read, naming the option."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.helpers.processes import FAST, eventually
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.cli import serve
from tether.control_plane.domain.messages import Retention, RetentionPolicy


async def test_the_sweep_archives_then_deletes_an_idle_session_and_spares_one_in_use(db_url):
    retention = Retention(RetentionPolicy(archive_idle_s=1.0, delete_idle_s=2.5), sweep_s=0.2)
    settings = Settings(port=0, db=db_url, timings=FAST, dev_owner="local", migrate=True, retention=retention)
    async with ControlPlane(settings) as cp, sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
        idle = await client.create_session("shell")
        used = await client.create_session("shell")
        await client.send_input(used.session_id, "keeps it in use")  # queued (no worker): a turn open

        async def archived() -> bool:
            return (await client.get_session(idle.session_id)).state == sdk.SessionState.ARCHIVED

        await eventually(archived, timeout=10, what="the idle session archived")
        assert (await client.get_session(used.session_id)).state == sdk.SessionState.ACTIVE

        async def deleted() -> bool:
            try:
                await client.get_session(idle.session_id)
                return False
            except sdk.NotFoundError:
                return True

        await eventually(deleted, timeout=10, what="the idle session deleted")
        assert (await client.get_session(used.session_id)).state == sdk.SessionState.ACTIVE
        hub = cp.hub
        assert hub is not None
        # The sweep counts a deletion once its commit returns to it, a moment after callers see it.
        await eventually(lambda: hub._retentions.archived >= 1 and hub._retentions.deleted >= 1, timeout=5)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--archive-idle-after", "soon"], "--archive-idle-after"),
        (["--delete-idle-after", "-1d"], "must not be negative"),
        (["--owner-retention", "acme"], "OWNER:archive=DURATION"),
        (["--owner-retention", "acme:keep=3d"], "archive=, delete= or compact=DURATION"),
    ],
)
def test_serve_refuses_a_retention_setting_it_cannot_read(args, says, tmp_path):
    result = CliRunner().invoke(serve, ["--db", str(tmp_path / "t.db"), "--port", "0", *args])
    assert result.exit_code == 2 and says in result.output, result.output
