"""A real ACP agent through Tether, end to end: `tether serve` and `tether worker --runtime acp`
processes, the pinned codex-acp binary (the worker is its ACP client), and the mock Responses
API on 127.0.0.1. Everything goes through the SDK, as an application would."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys

import pytest

from tests.helpers.acp_agent import needs_codex_acp, worker_flags
from tests.helpers.codex_mock import MockResponses
from tests.helpers.processes import ControlPlaneProcess, eventually, start_worker, workers_connected
from tether import sdk
from tether.v1 import resources_pb2 as pb

pytestmark = needs_codex_acp


@pytest.fixture(scope="module")
def mock():
    with MockResponses(slow_delay_s=0.4) as m:
        yield m


@pytest.fixture
def cp(tmp_path, db_url):
    cp = ControlPlaneProcess(tmp_path, db_url, extra=["--worker-dead-grace-s", "0.5"])
    cp.start()
    yield cp
    cp.stop()


def acp_worker(procs, cp, tmp_path: pathlib.Path, name: str, mock: MockResponses, *extra: str, carry_state=True):
    return start_worker(
        procs,
        cp.target,
        tmp_path / name,
        name,
        1,
        "--worker-id",
        name,
        *worker_flags(mock, tmp_path / f"{name}-agent", carry_state=carry_state),
        *extra,
    )


def kind(e: sdk.Event) -> str:
    return e.raw.body.WhichOneof("kind")


async def events_of(client: sdk.AsyncClient, session_id: str, turn_id: str) -> list[sdk.Event]:
    return [e async for e in client.stream_events(session_id, stop_at_end=True) if e.turn_id == turn_id]


async def opened_request(client: sdk.AsyncClient, session_id: str, turn_id: str) -> pb.PendingRequest:
    async for e in client.stream_events(session_id, timeout_s=60):
        if e.turn_id == turn_id and kind(e) == "request_opened":
            return e.raw.body.request_opened.request
        if e.turn_id == turn_id and e.is_terminal:
            raise AssertionError(f"turn ended without a request: {e}")
    raise AssertionError("the event stream ended")


async def finished(client: sdk.AsyncClient, session_id: str, turn_id: str) -> sdk.Turn:
    return await client.wait_for_turn(session_id, turn_id, timeout_s=60)


def items(events: list[sdk.Event]) -> list[pb.Item]:
    return [e.raw.body.item_completed.item for e in events if kind(e) == "item_completed"]


async def test_a_streamed_turn_and_the_declared_portability(cp, procs, tmp_path, mock):
    acp_worker(procs, cp, tmp_path, "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        await workers_connected(cp.target)
        (worker,) = await client.list_workers()
        assert "acp" in worker.runtimes and worker.runtime_portability.get("acp") == "state"
        s = await client.create_session("acp")
        t = await client.send_input(s.session_id, "hi there")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        events = await events_of(client, s.session_id, t.turn_id)
        deltas = [e.raw.body.item_delta for e in events if kind(e) == "item_delta"]
        assert len(deltas) >= 3 and all(d.kind == pb.DELTA_KIND_AGENT_MESSAGE for d in deltas)
        reply = "Hello from mock. You said: hi there"
        assert "".join(d.delta for d in deltas) == reply
        messages = [i for i in items(events) if i.kind == pb.ITEM_KIND_AGENT_MESSAGE]
        assert [m.text for m in messages] == [reply]
        assert any(kind(e) == "token_usage" and e.raw.body.token_usage.total_tokens > 0 for e in events)
        assert events[-1].kind == "turn_completed"


async def test_a_tool_call_approval_is_accepted_then_declined(cp, procs, tmp_path, mock):
    acp_worker(procs, cp, tmp_path, "wa", mock)
    workspace = tmp_path / "wa" / "sessions"
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("acp")
        workspace = workspace / s.session_id / "workspace"
        t1 = await client.send_input(s.session_id, "RUN_ESCALATED: touch accepted.txt")
        req = await opened_request(client, s.session_id, t1.turn_id)
        assert req.kind == pb.REQUEST_KIND_COMMAND_APPROVAL and "touch accepted.txt" in req.summary
        assert req.method == "session/request_permission"
        assert {"accept", "decline", "cancel"} <= set(req.available_decisions)
        await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        done = await finished(client, s.session_id, t1.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        events = await events_of(client, s.session_id, t1.turn_id)
        resolved = [e.raw.body.request_resolved for e in events if kind(e) == "request_resolved"]
        assert [(r.request_id, r.state) for r in resolved] == [(req.request_id, pb.REQUEST_STATE_RESOLVED)]
        commands = [i for i in items(events) if i.kind == pb.ITEM_KIND_COMMAND_EXECUTION]
        assert commands and commands[-1].command == "touch accepted.txt"
        assert (workspace / "accepted.txt").exists()

        t2 = await client.send_input(s.session_id, "RUN_ESCALATED: touch declined.txt")
        req2 = await opened_request(client, s.session_id, t2.turn_id)
        await client.respond_to_request(s.session_id, req2.request_id, json.dumps({"decision": "decline"}))
        done2 = await finished(client, s.session_id, t2.turn_id)
        # codex-acp's "decline" option aborts the command and ends the turn as cancelled.
        assert done2.state in (sdk.TurnState.COMPLETED, sdk.TurnState.INTERRUPTED), done2.error_message
        assert not (workspace / "declined.txt").exists()
        t3 = await client.send_input(s.session_id, "still there?")
        assert (await finished(client, s.session_id, t3.turn_id)).state == sdk.TurnState.COMPLETED


async def test_interrupt_stops_a_streaming_turn_and_the_session_goes_on(cp, procs, tmp_path, mock):
    acp_worker(procs, cp, tmp_path, "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("acp")
        t = await client.send_input(s.session_id, "SLOW " + "and on " * 20)
        async for e in client.stream_events(s.session_id, timeout_s=60):
            if kind(e) == "item_delta" and "Hello" in e.raw.body.item_delta.delta:
                break
        await client.interrupt_turn(s.session_id, t.turn_id, reason="the user pressed stop")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.INTERRUPTED and done.error_message == "the user pressed stop"
        t2 = await client.send_input(s.session_id, "still there?")
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED


async def test_a_model_api_failure_fails_the_turn_readably(cp, procs, tmp_path, mock):
    acp_worker(procs, cp, tmp_path, "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("acp")
        t = await client.send_input(s.session_id, "FAIL500")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.FAILED
        assert done.error_message.startswith("the acp agent failed the turn: session/prompt failed")
        assert "Traceback" not in done.error_message
        t2 = await client.send_input(s.session_id, "after the failure")
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED


@pytest.fixture
def cp_long_lease(tmp_path, db_url):
    """A control plane whose leases outlast its own restart on a busy machine: the worker's
    reconnect backoff (up to 5 s until the restarted control plane says otherwise) can miss
    the 3 s of the `cp` fixture, which would end the turn as lost, not answered."""
    cp = ControlPlaneProcess(tmp_path, db_url, extra=["--worker-dead-grace-s", "0.5", "--lease-ttl-s", "15"])
    cp.start()
    yield cp
    cp.stop()


async def test_a_pending_approval_is_answered_after_a_control_plane_restart(cp_long_lease, procs, tmp_path, mock):
    cp = cp_long_lease
    acp_worker(procs, cp, tmp_path, "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("acp")
        t = await client.send_input(s.session_id, "RUN_ESCALATED: touch after-restart.txt")
        req = await opened_request(client, s.session_id, t.turn_id)
    cp.stop(signal.SIGKILL)
    cp.start()  # same port, same database
    async with sdk.AsyncClient(cp.target) as client:
        await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        assert done.worker_id == "wa"
    assert (tmp_path / "wa" / "sessions" / s.session_id / "workspace" / "after-restart.txt").exists()


def _running_in(directory: str) -> list[int]:
    """Processes whose working directory is `directory`."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == directory:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def _snapshot_turns(client: sdk.AsyncClient, session_id: str) -> int:
    try:
        snap = await client.get_snapshot(session_id)
    except sdk.NotFoundError:
        return 0
    return sum(1 for h in snap.history if h.role == sdk.HistoryItemRole.INPUT)


async def test_after_a_worker_sigkill_the_agent_loads_the_session_on_another_worker(cp, procs, tmp_path, mock):
    a = acp_worker(procs, cp, tmp_path, "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("acp")
        t1 = await client.send_input(s.session_id, "remember: my favourite colour is teal")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        t2 = await client.send_input(s.session_id, "RUN_ESCALATED: echo tool-output-from-a")
        req = await opened_request(client, s.session_id, t2.turn_id)
        await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED

        async def both_turns_snapshotted() -> bool:
            return await _snapshot_turns(client, s.session_id) >= 2

        await eventually(both_turns_snapshotted, timeout=20, what="A's snapshot of both turns")
        a_workspace = str(tmp_path / "wa" / "sessions" / s.session_id / "workspace")
        assert _running_in(a_workspace), "A's agent runs in the session's workspace"
        a.send_signal(signal.SIGKILL)
        # The agent dies with its worker (codex-acp would otherwise outlive it).
        await eventually(lambda: not _running_in(a_workspace), timeout=10, what="A's agent to exit")
        # B has never seen the session: its agent state comes from the snapshot.
        acp_worker(procs, cp, tmp_path, "wb", mock)
        t3 = await client.send_input(s.session_id, "what was my colour?")
        done = await finished(client, s.session_id, t3.turn_id)
        assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wb", done.error_message
        # The model request B's agent sent carries the earlier turns, the tool call and its output.
        sent = mock.requests_containing("what was my colour?")[0]["input"]
        text = json.dumps(sent)
        assert "my favourite colour is teal" in text
        calls = [i for i in sent if i.get("type") == "function_call"]
        outputs = [i for i in sent if i.get("type") == "function_call_output"]
        assert calls and "echo tool-output-from-a" in calls[0]["arguments"]
        assert outputs and "tool-output-from-a" in outputs[0]["output"]
        assert text.index("my favourite colour is teal") < text.index("what was my colour?")


async def test_a_none_agent_session_is_not_continued_empty_on_another_worker(cp, procs, tmp_path, mock):
    a = acp_worker(procs, cp, tmp_path, "wa", mock, carry_state=False)
    async with sdk.AsyncClient(cp.target) as client:
        await workers_connected(cp.target)
        assert (await client.list_workers())[0].runtime_portability.get("acp") == "none"
        s = await client.create_session("acp")
        t1 = await client.send_input(s.session_id, "remember: the password is swordfish")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        a.send_signal(signal.SIGKILL)
        acp_worker(procs, cp, tmp_path, "wb", mock, carry_state=False)
        t2 = await client.send_input(s.session_id, "what was the password?")
        done = await finished(client, s.session_id, t2.turn_id)
        assert done.state == sdk.TurnState.FAILED
        # Refused by the control plane (RUNTIME_NOT_PORTABLE), or by the runtime on the new worker.
        reason = done.error_message
        assert "RUNTIME_NOT_PORTABLE" in reason or "portability none" in reason, reason
        # Never sent to the model on an empty conversation.
        assert not mock.requests_containing("what was the password?")


async def test_a_worker_offers_acp_only_when_its_agent_can_run(cp, procs, tmp_path, mock):
    # Nothing but acp, and no such agent binary: the worker exits 2 with one line naming the fix.
    args = [sys.executable, "-m", "tether.execution_worker", "--control-plane", cp.target, "--runtime", "acp"]
    args += ["--workdir", str(tmp_path / "wm"), "--acp-command", str(tmp_path / "no-agent")]
    missing = procs(args, "wm")
    missing.popen.wait(30)
    assert missing.popen.returncode == 2, missing.output()
    lines = [line for line in missing.output().splitlines() if "acp runtime" in line]
    assert len(lines) == 1 and "no acp agent binary" in lines[0] and "--acp-command" in lines[0], missing.output()

    # An agent that does not answer initialize: acp is left out, shell is still offered.
    broken = start_worker(procs, cp.target, tmp_path / "wx", "wx", 1, "--runtime", "acp", "--acp-command", "true")
    async with sdk.AsyncClient(cp.target) as client:
        await workers_connected(cp.target)
        (worker,) = await client.list_workers()
        assert worker.runtimes == ["shell"]
    assert "not offering the acp runtime: the acp agent `true` did not answer initialize" in broken.output()
