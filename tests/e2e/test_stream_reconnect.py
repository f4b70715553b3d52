"""A follower outlives its control plane: `stream_events` (async and blocking), `tether session
events --follow` and `tether session send --wait` reopen their stream after the last event they
saw when a real `tether serve` process is stopped (SIGTERM) or killed (SIGKILL) and started
again on the same port, and see every event exactly once. `reconnect=False` (`--no-reconnect`)
fails at once instead."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys
import threading

import pytest

from tests.helpers.processes import ROOT, ControlPlaneProcess, eventually, start_worker
from tether import sdk

# A turn that writes one line every 0.1 s for about 4 s: the restart lands in its middle.
LINES = 40
SLOW_TURN = f"for i in $(seq 1 {LINES}); do echo line$i; sleep 0.1; done"
EXPECTED_OUTPUT = "".join(f"line{i}\n" for i in range(1, LINES + 1))


@pytest.fixture
def cp(tmp_path: pathlib.Path):
    # The feature under test is the client's; one database (a SQLite file) is enough.
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db")
    cp.start()
    yield cp
    cp.stop(signal.SIGKILL)


async def _prepared_session(client: sdk.AsyncClient) -> str:
    """A session whose runtime is warm on the worker, so the slow turn starts at once."""
    s = await client.create_session("shell")
    warm = await client.send_input(s.session_id, "echo warm")
    assert (await client.wait_for_turn(s.session_id, warm.turn_id, timeout_s=30)).state == sdk.TurnState.COMPLETED
    return s.session_id


def _restart(cp: ControlPlaneProcess, sig: signal.Signals) -> None:
    cp.stop(sig)
    cp.start()  # the same port: ControlPlaneProcess keeps the one it bound first


def _stdout_of(events: list[sdk.Event], turn_id: str) -> str:
    return "".join(e.text for e in events if e.turn_id == turn_id and e.kind == "output")


def _assert_whole_log(followed: list[int], stored: list[sdk.Event]) -> None:
    assert followed == list(range(1, len(followed) + 1)), "the followed stream has a gap or a duplicate"
    assert followed == [e.seq for e in stored], "the follower missed events the log holds"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_stream_events_reopens_after_a_control_plane_restart(cp, procs, tmp_path, sig):
    start_worker(procs, cp.target, tmp_path / "w1", "w1", 1)
    async with sdk.AsyncClient(cp.target) as client:
        session_id = await _prepared_session(client)
        followed: list[sdk.Event] = []
        turn_id = ""

        async def follow() -> None:
            async for event in client.stream_events(session_id):
                followed.append(event)
                if event.turn_id == turn_id and event.is_terminal:
                    return

        follower = asyncio.create_task(follow())
        turn_id = (await client.send_input(session_id, SLOW_TURN)).turn_id
        await eventually(lambda: "line3\n" in _stdout_of(followed, turn_id), timeout=20, what="the turn's output")
        await asyncio.to_thread(_restart, cp, sig)
        assert "line40\n" not in _stdout_of(followed, turn_id), (
            "the restart came after the turn; the test proves nothing"
        )
        await asyncio.wait_for(follower, timeout=60)
        stored = [e async for e in client.stream_events(session_id, stop_at_end=True)]
    _assert_whole_log([e.seq for e in followed], stored)
    assert followed[-1].turn_id == turn_id and followed[-1].is_terminal
    if followed[-1].kind == "turn_completed":  # (how a restart ends a running turn is not this test's business)
        assert _stdout_of(followed, turn_id) == EXPECTED_OUTPUT


def test_the_blocking_client_reopens_too_and_reconnect_false_does_not(cp, procs, tmp_path):
    start_worker(procs, cp.target, tmp_path / "w1", "w1", 1)
    with sdk.Client(cp.target) as client:
        session_id = asyncio.run(_prepared_session_blocking(cp.target))
        stored_before = list(client.stream_events(session_id, stop_at_end=True))
        resilient = client.stream_events(session_id)
        fragile = client.stream_events(session_id, reconnect=False)
        assert [next(resilient).seq for _ in stored_before] == [e.seq for e in stored_before]
        assert [next(fragile).seq for _ in stored_before] == [e.seq for e in stored_before]
        _restart(cp, signal.SIGKILL)
        with pytest.raises(sdk.UnavailableError):
            next(fragile)
        turn = client.send_input(session_id, "echo after-restart")
        for event in resilient:
            if event.turn_id == turn.turn_id and event.is_terminal:
                break
        resilient.close()
        stored = list(client.stream_events(session_id, stop_at_end=True))
        assert [e.seq for e in stored][-1] == event.seq
        assert _stdout_of(stored, turn.turn_id) == "after-restart\n"


async def _prepared_session_blocking(target: str) -> str:
    async with sdk.AsyncClient(target) as client:
        return await _prepared_session(client)


def _cli(cp: ControlPlaneProcess, *args: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli", "session", "--control-plane", cp.target, *args]


async def test_the_cli_follower_and_send_wait_reopen_after_a_restart(cp, procs, tmp_path):
    start_worker(procs, cp.target, tmp_path / "w1", "w1", 1)
    async with sdk.AsyncClient(cp.target) as client:
        session_id = await _prepared_session(client)
        follower = _popen(_cli(cp, "events", session_id, "--follow", "--json"))
        followed: list[int] = []
        reader = threading.Thread(target=lambda: followed.extend(json.loads(line)["seq"] for line in follower.stdout))
        reader.start()
        sender = _popen(_cli(cp, "send", session_id, SLOW_TURN, "--wait"))
        try:

            async def started() -> bool:
                events = [e async for e in client.stream_events(session_id, stop_at_end=True)]
                return "line3\n" in "".join(e.text for e in events if e.kind == "output")

            await eventually(started, timeout=20, what="the turn's output")
            await asyncio.to_thread(_restart, cp, signal.SIGKILL)
            sent_out, sent_err = await asyncio.to_thread(sender.communicate, timeout=60)
            stored = [e async for e in client.stream_events(session_id, stop_at_end=True)]
            assert stored[-1].is_terminal
            printed_the_end = True
            try:
                await eventually(lambda: stored[-1].seq in followed, timeout=20, what="the follower to print the end")
            except AssertionError:
                printed_the_end = False
        finally:
            follower.send_signal(signal.SIGINT)
            _, followed_err = await asyncio.to_thread(follower.communicate, timeout=30)
            reader.join()
            if sender.poll() is None:
                sender.kill()
    assert printed_the_end, f"the follower printed up to {followed[-1:]} of {stored[-1].seq}:\n{followed_err}"
    assert "Traceback" not in sent_err and "Traceback" not in followed_err, sent_err + followed_err
    assert "reopening" in sent_err and "reopening" in followed_err  # each said what it did
    _assert_whole_log(followed, stored)
    # How a crash of the control plane treats the running turn is not this test's business; the
    # sender printed what the log holds, once, and ended as the turn did.
    assert sent_out == "".join(e.text for e in stored if e.kind == "output" and e.turn_id == stored[-1].turn_id)
    assert sender.returncode == (0 if stored[-1].kind == "turn_completed" else 1), sent_err


def test_the_cli_follower_with_no_reconnect_fails_on_a_restart(cp, tmp_path):
    with sdk.Client(cp.target) as client:
        session_id = client.create_session("shell").session_id
    follower = _popen(_cli(cp, "events", session_id, "--follow", "--no-reconnect"))
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            follower.wait(1.0)  # it follows
        _restart(cp, signal.SIGKILL)
        _, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1 and "(UNAVAILABLE)" in err and "Traceback" not in err, err


def _popen(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
