"""The after-turn snapshot is skipped when it would carry nothing the log lacks: a runtime that
rebuilds from the log (portability history) whose files did not change uploads one only every
`snapshot_log_turns` turns, and a session that moves meanwhile loses nothing. A turn that
changes files, or a runtime whose state the log lacks, still gets one after every turn."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from tests.helpers.fake_control_plane import FakeRuntime, _connected, _run_turn
from tests.helpers.processes import eventually
from tests.integration.test_workspace_worker import _turn  # a turn's output, checked COMPLETED
from tether import sdk
from tether.execution_worker import Portability, Worker, WorkerSettings

LOG_TURNS = 3
SETTLE_S = 0.5  # well past the 50 ms idle wait and an upload on loopback


@pytest.mark.parametrize(
    ("portability", "expected"),
    [(Portability.HISTORY, [3]), (Portability.STATE, [1, 2, 3, 4, 5])],
    ids=["history", "state"],
)
async def test_only_a_runtime_whose_state_the_log_lacks_snapshots_after_every_turn(
    fake_cp, start_worker, portability, expected, monkeypatch
):
    cp, target = fake_cp
    monkeypatch.setattr(FakeRuntime, "restore_state", lambda self, state: None, raising=False)
    w = start_worker(target, snapshot_log_turns=LOG_TURNS)
    w.registry.portability = portability  # read by runtime_portability()
    await _connected(cp)
    uploads: list[int] = []
    for n in range(1, 6):
        await _run_turn(cp, "ses_a", f"trn_{n}")
        await asyncio.sleep(SETTLE_S)
        if len(cp.snapshots()) > len(uploads):
            uploads.append(n)
    assert uploads == expected


async def _snapshot_seq(client: sdk.AsyncClient, session_id: str) -> int:
    """The seq the session's newest stored snapshot covers (0: none)."""
    try:
        return (await client.get_snapshot(session_id)).seq
    except sdk.NotFoundError:
        return 0


async def test_a_shell_session_snapshots_when_its_files_change_or_every_few_turns_and_moves_whole(
    control_plane, client, tmp_path: pathlib.Path
):
    target = f"127.0.0.1:{control_plane.port}"
    workers = [
        Worker(WorkerSettings(workdir=tmp_path / n, control_plane=target, snapshot_log_turns=LOG_TURNS)) for n in "ab"
    ]
    running = [asyncio.create_task(w.run()) for w in workers]
    try:
        await eventually(lambda: all(w.connected for w in workers), timeout=10, what="both workers connected")
        sid = (await client.create_session("shell")).session_id

        await _turn(client, sid, "echo one")  # no file changes: no snapshot
        await asyncio.sleep(SETTLE_S)
        assert await _snapshot_seq(client, sid) == 0

        await _turn(client, sid, "echo two > file.txt")  # a file changed: a snapshot with it
        covered = (await client.get_session(sid)).last_seq
        await eventually(
            lambda: _covers(client, sid, covered), timeout=10, what="the snapshot of the turn that wrote a file"
        )

        await _turn(client, sid, "echo three")
        await _turn(client, sid, "echo four")
        await asyncio.sleep(SETTLE_S)
        assert await _snapshot_seq(client, sid) == covered  # two turns, no change: skipped

        await _turn(client, sid, "echo five")  # the third since the last one: uploaded anyway
        last = (await client.get_session(sid)).last_seq
        await eventually(lambda: _covers(client, sid, last), timeout=10, what="the every-3-turns snapshot")

        await _turn(client, sid, "echo six >> file.txt")
        sixth = (await client.get_session(sid)).last_seq
        await eventually(lambda: _covers(client, sid, sixth), timeout=10, what="the snapshot of the sixth turn")
        await _turn(client, sid, "echo seven")  # skipped: the log alone holds it
        await asyncio.sleep(SETTLE_S)
        assert await _snapshot_seq(client, sid) == sixth

        # Moved to the other worker, the session continues from its snapshot and the log after
        # it: every turn's history and the files as the latest checkpoint has them.
        first = (await client.get_session(sid)).worker_id
        await client.restore_session(sid, timeout_s=20)
        assert (await client.get_session(sid)).worker_id != first
        assert await _turn(client, sid, "cat file.txt") == "two\nsix\n"
        snap = await client.create_snapshot(sid, timeout_s=20)
        stored = await client.get_snapshot(sid)
        assert stored.seq == snap.seq
        inputs = [item.text for item in stored.history if item.role == sdk.HistoryItemRole.INPUT]
        assert inputs == [
            "echo one",
            "echo two > file.txt",
            "echo three",
            "echo four",
            "echo five",
            "echo six >> file.txt",
            "echo seven",
            "cat file.txt",
        ]
    finally:
        for w in workers:
            await w.close()
        await asyncio.gather(*running, return_exceptions=True)


async def _covers(client: sdk.AsyncClient, session_id: str, seq: int) -> bool:
    return await _snapshot_seq(client, session_id) >= seq
