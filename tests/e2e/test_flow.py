"""The whole flow over real gRPC, with `tether serve` and `tether worker` as real processes."""

from __future__ import annotations

import asyncio
import signal

from tests.helpers.processes import ControlPlaneProcess, eventually, start_worker, workers_connected
from tether import sdk


async def _events(client: sdk.AsyncClient, session_id: str, after: int = 0) -> list[sdk.Event]:
    return [e async for e in client.stream_events(session_id, after_seq=after, stop_at_end=True)]


async def test_turn_streams_output_and_exit_code(cp_process, procs, tmp_path):
    start_worker(procs, cp_process.target, tmp_path / "w1", "w1")
    await workers_connected(cp_process.target)  # else the turn first waits, and says so
    async with sdk.AsyncClient(cp_process.target) as client:
        s = await client.create_session("shell")
        turn = await client.send_input(s.session_id, "echo hello; echo oops >&2; exit 3")
        done = await client.wait_for_turn(s.session_id, turn.turn_id, timeout_s=20)
        assert done.state == sdk.TurnState.COMPLETED and done.exit_code == 3
        events = await _events(client, s.session_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.kind for e in events][:2] == ["input_received", "turn_started"]
        assert events[-1].kind == "turn_completed" and events[-1].exit_code == 3
        out = "".join(e.text for e in events if e.kind == "output" and e.stream == "stdout")
        err = "".join(e.text for e in events if e.kind == "output" and e.stream == "stderr")
        assert (out, err) == ("hello\n", "oops\n")
        # The turn ran in the session's own workspace, and a second turn sees what the first left.
        t2 = await client.send_input(s.session_id, "echo state > f.txt && cat f.txt && pwd")
        done2 = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=20)
        assert done2.state == sdk.TurnState.COMPLETED and done2.worker_id == done.worker_id
        text = "".join(e.text for e in await _events(client, s.session_id, after=events[-1].seq) if e.kind == "output")
        assert text.startswith("state\n") and s.session_id in text


async def test_worker_started_after_the_session_gets_its_queued_turn(cp_process, procs, tmp_path):
    async with sdk.AsyncClient(cp_process.target) as client:
        s = await client.create_session("shell")
        turn = await client.send_input(s.session_id, "echo late")
        assert (await client.get_turn(s.session_id, turn.turn_id)).state == sdk.TurnState.QUEUED
        start_worker(procs, cp_process.target, tmp_path / "w1", "w1")
        done = await client.wait_for_turn(s.session_id, turn.turn_id, timeout_s=20)
        assert done.state == sdk.TurnState.COMPLETED


async def test_two_workers_share_the_load(cp_process, procs, tmp_path):
    start_worker(procs, cp_process.target, tmp_path / "w1", "w1", 1)
    start_worker(procs, cp_process.target, tmp_path / "w2", "w2", 1)
    async with sdk.AsyncClient(cp_process.target) as client:
        sessions = [await client.create_session("shell") for _ in range(4)]
        turns = await asyncio.gather(*(client.send_input(s.session_id, "sleep 0.3; echo done") for s in sessions))
        done = await asyncio.gather(
            *(client.wait_for_turn(s.session_id, t.turn_id, timeout_s=30) for s, t in zip(sessions, turns, strict=True))
        )
        assert all(t.state == sdk.TurnState.COMPLETED for t in done)
        # One slot each and four concurrent turns: both workers must have run some.
        assert len({t.worker_id for t in done}) == 2


async def test_two_subscribers_see_the_same_gapless_log(cp_process, procs, tmp_path):
    start_worker(procs, cp_process.target, tmp_path / "w1", "w1")
    async with sdk.AsyncClient(cp_process.target) as client:
        s = await client.create_session("shell")
        n_turns = 5
        seen: list[list[int]] = [[], []]

        async def follow(i: int) -> None:
            finished = 0
            async for e in client.stream_events(s.session_id):
                seen[i].append(e.seq)
                finished += e.is_terminal
                if finished == n_turns:
                    return

        followers = [asyncio.create_task(follow(i)) for i in range(2)]
        for k in range(n_turns):
            t = await client.send_input(s.session_id, f"for i in 1 2 3; do echo {k}-$i; done")
        await asyncio.wait_for(asyncio.gather(*followers), 30)
        assert seen[0] == seen[1] == list(range(1, len(seen[0]) + 1))
        assert (await client.get_turn(s.session_id, t.turn_id)).state == sdk.TurnState.COMPLETED


async def test_reconnecting_subscriber_gets_exactly_the_missing_events(cp_process, procs, tmp_path):
    start_worker(procs, cp_process.target, tmp_path / "w1", "w1")
    async with sdk.AsyncClient(cp_process.target) as client:
        s = await client.create_session("shell")
        t1 = await client.send_input(s.session_id, "echo one; echo two")
        first: list[sdk.Event] = []
        async for e in client.stream_events(s.session_id):
            first.append(e)
            if e.is_terminal:
                break  # disconnect
        cursor = first[-1].seq
        t2 = await client.send_input(s.session_id, "echo three")
        await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=20)
        rest = await _events(client, s.session_id, after=cursor)
        assert [e.seq for e in rest] == list(range(cursor + 1, cursor + 1 + len(rest)))
        assert {e.turn_id for e in rest} == {t2.turn_id}
        assert [e.seq for e in first + rest] == [e.seq for e in await _events(client, s.session_id)]
        assert t1.turn_id == first[0].turn_id


async def test_interrupt_stops_a_running_command(cp_process, procs, tmp_path):
    start_worker(procs, cp_process.target, tmp_path / "w1", "w1")
    async with sdk.AsyncClient(cp_process.target) as client:
        s = await client.create_session("shell")
        t = await client.send_input(s.session_id, "echo started; sleep 60")
        async for e in client.stream_events(s.session_id):
            if e.kind == "output":
                break
        await client.interrupt_turn(s.session_id, t.turn_id, reason="user pressed stop")
        done = await client.wait_for_turn(s.session_id, t.turn_id, timeout_s=15)
        assert done.state == sdk.TurnState.INTERRUPTED
        last = (await _events(client, s.session_id))[-1]
        assert last.kind == "turn_interrupted" and "user pressed stop" in last.reason
        # The session goes on: the next turn runs.
        t2 = await client.send_input(s.session_id, "echo after")
        assert (await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=15)).state == sdk.TurnState.COMPLETED


async def test_snapshot_holds_the_model_visible_history(cp_process, procs, tmp_path):
    start_worker(procs, cp_process.target, tmp_path / "w1", "w1")
    async with sdk.AsyncClient(cp_process.target) as client:
        s = await client.create_session("shell")
        for cmd in ("echo alpha", "echo beta"):
            t = await client.send_input(s.session_id, cmd)
            await client.wait_for_turn(s.session_id, t.turn_id, timeout_s=20)
        snap = await client.create_snapshot(s.session_id)
        assert [(h.role.name, h.text) for h in snap.history] == [
            ("INPUT", "echo alpha"),
            ("OUTPUT", "alpha\n"),
            ("INPUT", "echo beta"),
            ("OUTPUT", "beta\n"),
        ]
        assert snap.seq == (await client.get_session(s.session_id)).last_seq
        latest = await client.get_snapshot(s.session_id)
        assert latest.snapshot_id == snap.snapshot_id and len(latest.history) == 4


async def test_worker_reconnects_after_control_plane_restart(tmp_path, procs, db_url):
    cp = ControlPlaneProcess(tmp_path, db_url)
    cp.start()
    try:
        start_worker(procs, cp.target, tmp_path / "w1", "w1")
        async with sdk.AsyncClient(cp.target) as client:
            s = await client.create_session("shell")
            t = await client.send_input(s.session_id, "echo before")
            await client.wait_for_turn(s.session_id, t.turn_id, timeout_s=20)
        cp.stop(signal.SIGKILL)
        await asyncio.sleep(0.5)  # the worker is now retrying against a closed port
        cp.start()  # same port, same database
        async with sdk.AsyncClient(cp.target) as client:
            before = await _events(client, s.session_id)
            assert before[-1].kind == "turn_completed"  # nothing acknowledged was lost
            reloaded = await client.get_session(s.session_id)
            assert reloaded.turn_count == 1 and reloaded.last_seq == before[-1].seq
            assert reloaded.update_time >= before[-1].create_time
            t2 = await client.send_input(s.session_id, "echo after")
            done = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=30)
            assert done.state == sdk.TurnState.COMPLETED
            events = await _events(client, s.session_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
    finally:
        cp.stop()


async def test_health_check_serves(cp_process):
    async with sdk.AsyncClient(cp_process.target) as client:
        await eventually(client.health, timeout=5, what="health SERVING")


async def test_sigterm_drains_the_worker_without_losing_the_running_turn(cp_process, procs, tmp_path):
    w = start_worker(procs, cp_process.target, tmp_path / "w1", "w1", 1, "--drain-grace-s", "20")
    async with sdk.AsyncClient(cp_process.target) as client:
        s = await client.create_session("shell")
        t = await client.send_input(s.session_id, "echo begin; sleep 1; echo end")
        async for e in client.stream_events(s.session_id):
            if e.kind == "output":
                break
        w.send_signal(signal.SIGTERM)
        done = await client.wait_for_turn(s.session_id, t.turn_id, timeout_s=20)
        assert done.state == sdk.TurnState.COMPLETED
        assert w.popen.wait(20) == 0
        # The drained worker released its lease: the session is free for any other worker.
        await eventually(lambda: _holder_is(client, s.session_id, ""), timeout=10, what="lease released")
        text = "".join(e.text for e in await _events(client, s.session_id) if e.kind == "output")
        assert text == "begin\nend\n"


async def _holder_is(client: sdk.AsyncClient, session_id: str, worker_id: str) -> bool:
    return (await client.get_session(session_id)).worker_id == worker_id


async def test_session_of_a_killed_worker_moves_and_is_rehydrated_from_its_history(cp_process, procs, tmp_path):
    a = start_worker(procs, cp_process.target, tmp_path / "wa", "wa", 1)
    async with sdk.AsyncClient(cp_process.target) as client:
        s = await client.create_session("shell")
        t1 = await client.send_input(s.session_id, "echo remembered")
        first = await client.wait_for_turn(s.session_id, t1.turn_id, timeout_s=20)
        a.send_signal(signal.SIGKILL)
        start_worker(procs, cp_process.target, tmp_path / "wb", "wb", 1)
        t2 = await client.send_input(s.session_id, "echo next")
        # The new worker takes the session once A's lease expires, with a new epoch.
        second = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=30)
        assert second.state == sdk.TurnState.COMPLETED
        assert second.worker_id != first.worker_id and second.lease_epoch == first.lease_epoch + 1
        # B's runtime was rehydrated from the log: its history holds A's turn too.
        snap = await client.create_snapshot(s.session_id)
        assert [h.text for h in snap.history] == ["echo remembered", "remembered\n", "echo next", "next\n"]
        events = await _events(client, s.session_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_serve_explains_a_busy_port_and_a_bad_database_path(cp_process, tmp_path):
    import subprocess
    import sys

    busy = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.control_plane",
            "--port",
            str(cp_process.port),
            "--db",
            str(tmp_path / "other.db"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert busy.returncode == 1
    assert f"cannot listen on 127.0.0.1:{cp_process.port}" in busy.stderr and "Traceback" not in busy.stderr
    (tmp_path / "a-file").write_text("")
    bad = subprocess.run(
        [sys.executable, "-m", "tether.control_plane", "--port", "0", "--db", str(tmp_path / "a-file" / "x.db")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
    assert "cannot open the database" in bad.stderr and "Traceback" not in bad.stderr
