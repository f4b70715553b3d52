"""Workspaces move with their sessions: with two real workers, a session's files (a
subdirectory, an executable bit, a symlink, an empty directory; not what .tetherignore lists)
follow it to another worker by RestoreSession, edits made there come back with it, files it
deleted there are gone from the earlier worker's copy, and a worker SIGKILLed after a checkpoint
loses nothing: the next turn, on the other worker, finds every file. Each move is a
`workspace_restored` event in the log."""

from __future__ import annotations

import pathlib
import signal

from tests.helpers.processes import ControlPlaneProcess, eventually, start_worker
from tether import sdk

FIRST = (
    "mkdir -p d/empty && echo first > d/notes.txt && chmod 755 d/notes.txt && ln -s d/notes.txt link"
    " && echo doomed > gone.txt && printf 'scratch/\\n' > .tetherignore && mkdir scratch && echo s > scratch/s"
)
SECOND = (
    "cat d/notes.txt; test -x d/notes.txt && echo exec; readlink link; test -d d/empty && echo empty-dir;"
    " ls scratch 2>/dev/null || echo no-scratch; echo second > d/notes.txt; echo new > two.txt; rm gone.txt"
)


async def _run(client: sdk.AsyncClient, session_id: str, command: str) -> tuple[sdk.Turn, str]:
    turn = await client.send_input(session_id, command)
    done = await client.wait_for_turn(session_id, turn.turn_id, timeout_s=30)
    events = [e async for e in client.stream_events(session_id, after_seq=0, stop_at_end=True)]
    text = "".join(e.text for e in events if e.turn_id == turn.turn_id and e.kind == "output")
    assert done.state == sdk.TurnState.COMPLETED, (done, text)
    return done, text


async def _move(client: sdk.AsyncClient, session_id: str, worker_id: str) -> None:
    await client.create_snapshot(session_id, timeout_s=30)  # the checkpoint of the files as they are
    moved = await client.restore_session(session_id, worker_id=worker_id, timeout_s=30)
    assert moved.worker_id == worker_id


async def _restored(client: sdk.AsyncClient, session_id: str) -> list[sdk.Event]:
    return [
        e
        async for e in client.stream_events(session_id, after_seq=0, stop_at_end=True)
        if e.kind == "workspace_restored"
    ]


async def test_files_follow_the_session_between_workers_and_survive_a_sigkill(
    cp_process, procs, tmp_path: pathlib.Path
) -> None:
    workers = {
        name: start_worker(procs, cp_process.target, tmp_path / name, name, 1, "--name", name) for name in ("a", "b")
    }
    async with sdk.AsyncClient(cp_process.target) as client:
        ids: dict[str, str] = {}

        async def both_connected() -> bool:
            ids.update({w.name: w.worker_id for w in await client.list_workers() if w.connected})
            return {"a", "b"} <= set(ids)

        await eventually(both_connected, 20, "both workers connected")
        names = {worker_id: name for name, worker_id in ids.items()}
        session = await client.create_session("shell")
        sid = session.session_id
        first, _ = await _run(client, sid, FIRST)
        here = first.worker_id
        there = ids["b"] if here == ids["a"] else ids["a"]

        await _move(client, sid, there)
        done, text = await _run(client, sid, SECOND)
        assert done.worker_id == there
        assert text.split("\n") == ["first", "exec", "d/notes.txt", "empty-dir", "no-scratch", ""], text
        [restored] = await _restored(client, sid)
        assert restored.turn_id == done.turn_id
        # notes.txt, link, gone.txt and .tetherignore; scratch/ stayed behind.
        assert (restored.workspace_restored.file_count, restored.workspace_restored.files_written) == (4, 4)

        await _move(client, sid, here)  # back to the worker that holds turn 1's copy
        done, text = await _run(client, sid, "cat d/notes.txt two.txt; ls gone.txt 2>/dev/null || echo gone")
        assert done.worker_id == here
        assert text == "second\nnew\ngone\n", text  # its stale copy was brought up to date
        assert (tmp_path / names[here] / "sessions" / sid / "scratch" / "s").exists()  # ignored: left alone

        await client.create_snapshot(sid, timeout_s=30)
        workers[names[here]].send_signal(signal.SIGKILL)
        done, text = await _run(client, sid, "cat d/notes.txt two.txt; readlink link")
        assert done.worker_id == there
        assert text == "second\nnew\nd/notes.txt\n", text
        assert len(await _restored(client, sid)) == 3


async def test_a_checkpoint_over_the_owners_limit_keeps_the_previous_one_and_the_history_moves_on(
    procs, tmp_path: pathlib.Path, db_url: str
) -> None:
    cp = ControlPlaneProcess(tmp_path, db_url, extra=["--max-workspace-files", "2"])
    cp.start()
    try:
        for name in ("a", "b"):
            start_worker(procs, cp.target, tmp_path / name, name, 1, "--name", name)
        async with sdk.AsyncClient(cp.target) as client:
            ids: dict[str, str] = {}

            async def both_connected() -> bool:
                ids.update({w.name: w.worker_id for w in await client.list_workers() if w.connected})
                return {"a", "b"} <= set(ids)

            await eventually(both_connected, 20, "both workers connected")
            sid = (await client.create_session("shell")).session_id
            first, _ = await _run(client, sid, "echo 1 > one; echo 2 > two")
            await client.create_snapshot(sid, timeout_s=30)
            await _run(client, sid, "echo 3 > three")  # a third file: over --max-workspace-files
            snap = await client.create_snapshot(sid, timeout_s=30)  # refused workspace, stored history
            assert any("echo 3 > three" in h.text for h in snap.history)
            there = ids["b"] if first.worker_id == ids["a"] else ids["a"]
            moved = await client.restore_session(sid, worker_id=there, timeout_s=30)
            assert moved.worker_id == there
            done, text = await _run(client, sid, "cat one two; ls three 2>/dev/null || echo no-three")
            assert done.worker_id == there
            assert text == "1\n2\nno-three\n", text  # the previous checkpoint's files, not the refused one's
        log = (tmp_path / f"{'a' if first.worker_id == ids['a'] else 'b'}.log").read_text()
        assert "max_workspace_files" in log and "keeps its previous checkpoint" in log, log[-2000:]
    finally:
        cp.stop()


async def test_a_lost_turns_files_do_not_survive_when_the_session_had_no_checkpoint_yet(
    procs, tmp_path: pathlib.Path, db_url: str
) -> None:
    """The session's first turn writes a file, then its worker dies before any checkpoint. The
    worker comes back (same workdir and id) and takes the session at the next epoch: with no
    checkpoint the session's workspace is empty, so the lost turn's file is removed."""
    cp = ControlPlaneProcess(tmp_path, db_url, extra=["--worker-dead-grace-s", "0.5"])
    cp.start()
    try:
        worker = start_worker(procs, cp.target, tmp_path / "w", "w1", 1)
        async with sdk.AsyncClient(cp.target) as client:
            await eventually(lambda: _connected(client, 1), 20, "the worker connected")
            sid = (await client.create_session("shell")).session_id
            lost = await client.send_input(sid, "echo stale >> f.txt; echo wrote; sleep 30")
            async for e in client.stream_events(sid, timeout_s=30):
                if e.turn_id == lost.turn_id and e.kind == "output":
                    break
            worker.send_signal(signal.SIGKILL)
            start_worker(procs, cp.target, tmp_path / "w", "w2", 1)
            ended = await client.wait_for_turn(sid, lost.turn_id, timeout_s=30)
            assert ended.state == sdk.TurnState.FAILED
            done, text = await _run(client, sid, "ls -A; echo end")
            assert text == "end\n", text  # f.txt, never checkpointed, is gone
            [restored] = await _restored(client, sid)
            assert restored.turn_id == done.turn_id and restored.workspace_restored.files_removed == 1
    finally:
        cp.stop()


async def _connected(client: sdk.AsyncClient, n: int) -> bool:
    return sum(1 for w in await client.list_workers() if w.connected) >= n
