"""The real Claude Code CLI through Tether, end to end: `tether serve` and `tether worker
--runtime claude` processes, the pinned `claude` binary, and a mock Anthropic Messages API on
127.0.0.1. Everything goes through the SDK, as an application would. On SQLite: the control
plane's side (requests, restarts, moves) is the same for every runtime and runs on PostgreSQL in
the codex and failover tests."""

from __future__ import annotations

import json
import pathlib
import signal

import pytest

from tests.helpers.anthropic_mock import MockAnthropic, claude_bin
from tests.helpers.processes import ControlPlaneProcess, eventually, start_worker, workers_connected
from tether import sdk
from tether.execution_worker._claude_settings import claude_session_id
from tether.v1 import resources_pb2 as pb

pytestmark = pytest.mark.skipif(
    claude_bin() is None, reason="the pinned Claude Code is not installed (run `make test`, which installs it with npm)"
)


@pytest.fixture(scope="module")
def mock():
    with MockAnthropic(slow_delay_s=0.4) as m:
        yield m


@pytest.fixture(autouse=True)
def model_api(mock: MockAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers (and so their claude processes) reach the mock, with a dummy key."""
    for key, value in mock.env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def cp(tmp_path):
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db", extra=["--worker-dead-grace-s", "0.5"])
    cp.start()
    yield cp
    cp.stop()


def claude_worker(procs, cp: ControlPlaneProcess, workdir: pathlib.Path, name: str, mock: MockAnthropic, *extra: str):
    return start_worker(
        procs,
        cp.target,
        workdir,
        name,
        1,
        "--worker-id",
        name,
        *mock.worker_flags(),
        "--claude-max-retries",
        "0",
        "--claude-config-from",
        str(workdir / "no-user-config"),
        *extra,
    )


def kind(e: sdk.Event) -> str:
    return e.raw.body.WhichOneof("kind")


async def events_of(client: sdk.AsyncClient, session_id: str, turn_id: str | None = None) -> list[sdk.Event]:
    found = [e async for e in client.stream_events(session_id, stop_at_end=True)]
    return [e for e in found if turn_id is None or e.turn_id == turn_id]


async def opened_request(client: sdk.AsyncClient, session_id: str, turn_id: str) -> pb.PendingRequest:
    """Wait for the turn's request_opened event, as an application following the log would."""
    async for e in client.stream_events(session_id, timeout_s=60):
        if e.turn_id == turn_id and kind(e) == "request_opened":
            return e.raw.body.request_opened.request
        if e.turn_id == turn_id and e.is_terminal:
            raise AssertionError(f"turn ended without a request: {e}")
    raise AssertionError("the event stream ended")


async def finished(client: sdk.AsyncClient, session_id: str, turn_id: str) -> sdk.Turn:
    return await client.wait_for_turn(session_id, turn_id, timeout_s=60)


def items(events: list[sdk.Event], which: str = "item_completed") -> list[pb.Item]:
    return [getattr(e.raw.body, which).item for e in events if kind(e) == which]


def workspace(tmp_path: pathlib.Path, worker: str, session_id: str) -> pathlib.Path:
    return tmp_path / worker / "sessions" / session_id / "workspace"


async def test_a_streamed_turn_gives_deltas_the_message_usage_and_claude_history(cp, procs, tmp_path, mock):
    claude_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        await workers_connected(cp.target)
        [worker] = await client.list_workers()
        assert "claude" in worker.runtimes and worker.runtime_portability["claude"] == "history"
        s = await client.create_session("claude")
        t = await client.send_input(s.session_id, "hi there")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        events = await events_of(client, s.session_id, t.turn_id)
        reply = "Hello from mock. You said: hi there"
        deltas = [e.raw.body.item_delta for e in events if kind(e) == "item_delta"]
        assert len(deltas) > 1 and all(d.kind == pb.DELTA_KIND_AGENT_MESSAGE for d in deltas)
        assert "".join(d.delta for d in deltas) == reply
        messages = [i for i in items(events) if i.kind == pb.ITEM_KIND_AGENT_MESSAGE]
        assert [m.text for m in messages] == [reply] and {d.item_id for d in deltas} == {messages[0].item_id}
        assert any(kind(e) == "token_usage" and e.raw.body.token_usage.total_tokens > 0 for e in events)
        history = [e.raw.body.history_item for e in events if kind(e) == "history_item"]
        assert [json.loads(h.raw_json)["role"] for h in history] == ["user", "assistant"]
        assert events[-1].kind == "turn_completed"

        async def claude_session_recorded() -> bool:
            return (await client.get_session(s.session_id)).runtime_thread_id == claude_session_id(s.session_id)

        await eventually(claude_session_recorded, timeout=20, what="Claude's session id on the session")


async def test_a_tool_use_is_approved_then_declined_in_another_turn(cp, procs, tmp_path, mock):
    claude_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("claude")
        t1 = await client.send_input(s.session_id, "RUN: touch accepted.txt")
        req = await opened_request(client, s.session_id, t1.turn_id)
        assert req.kind == pb.REQUEST_KIND_COMMAND_APPROVAL and "touch accepted.txt" in req.summary
        assert req.method == "can_use_tool" and req.state == pb.REQUEST_STATE_PENDING
        assert list(req.available_decisions) == ["accept", "acceptForSession", "decline", "cancel"]
        await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        with pytest.raises(sdk.FailedPreconditionError, match="already answered"):
            await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "decline"}))
        done = await finished(client, s.session_id, t1.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        events = await events_of(client, s.session_id, t1.turn_id)
        resolved = [e.raw.body.request_resolved for e in events if kind(e) == "request_resolved"]
        assert [(r.request_id, r.state) for r in resolved] == [(req.request_id, pb.REQUEST_STATE_RESOLVED)]
        [command] = [i for i in items(events) if i.kind == pb.ITEM_KIND_COMMAND_EXECUTION]
        assert command.command == "touch accepted.txt" and command.status == "completed" and command.exit_code == 0
        assert (workspace(tmp_path, "wa", s.session_id) / "accepted.txt").exists()

        t2 = await client.send_input(s.session_id, "RUN: touch declined.txt")
        req2 = await opened_request(client, s.session_id, t2.turn_id)
        await client.respond_to_request(s.session_id, req2.request_id, json.dumps({"decision": "decline"}))
        done2 = await finished(client, s.session_id, t2.turn_id)
        assert done2.state == sdk.TurnState.COMPLETED, done2.error_message
        events2 = await events_of(client, s.session_id, t2.turn_id)
        [declined] = [i for i in items(events2) if i.kind == pb.ITEM_KIND_COMMAND_EXECUTION]
        assert declined.status == "failed" and "declined" in declined.aggregated_output
        assert not (workspace(tmp_path, "wa", s.session_id) / "declined.txt").exists()
        # The model heard of the refusal, and said so.
        assert "declined" in [i for i in items(events2) if i.kind == pb.ITEM_KIND_AGENT_MESSAGE][-1].text


async def test_interrupt_stops_a_streaming_turn_and_the_session_goes_on(cp, procs, tmp_path, mock):
    claude_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("claude")
        t = await client.send_input(s.session_id, "SLOW one two three four five six seven eight nine ten")
        async for e in client.stream_events(s.session_id, timeout_s=60):
            if kind(e) == "item_delta":
                break
        await client.interrupt_turn(s.session_id, t.turn_id, reason="the user pressed stop")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.INTERRUPTED and done.error_message == "the user pressed stop"
        t2 = await client.send_input(s.session_id, "still there?")
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED


async def test_the_model_api_failing_fails_the_turn_readably(cp, procs, tmp_path, mock):
    claude_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("claude")
        t = await client.send_input(s.session_id, "FAIL500")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.FAILED
        assert "API Error: 500 mock: internal server error" in done.error_message
        assert "Traceback" not in done.error_message
        errors = [
            e.raw.body.agent_error for e in await events_of(client, s.session_id, t.turn_id) if kind(e) == "agent_error"
        ]
        assert errors and not errors[-1].will_retry and "500" in errors[-1].message


@pytest.mark.parametrize("snapshots", ["after every turn", "none: from the log"])
async def test_after_a_sigkill_the_next_turn_runs_elsewhere_with_the_history_carried(
    cp, procs, tmp_path, mock, snapshots
):
    every = "1" if snapshots == "after every turn" else "0"
    a = claude_worker(
        procs, cp, tmp_path / "wa", "wa", mock, "--snapshot-every-turns", every, "--snapshot-log-turns", "1"
    )
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("claude")
        t1 = await client.send_input(s.session_id, "remember: my favourite colour is teal")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        t2 = await client.send_input(s.session_id, "RUN: echo tool-output-from-a")
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED
        if every == "1":
            await eventually(lambda: _has_snapshot(client, s.session_id, 2), timeout=20, what="A's snapshot")
        a.send_signal(signal.SIGKILL)
        # B has a fresh config directory and has never seen the session.
        claude_worker(procs, cp, tmp_path / "wb", "wb", mock)
        seen = len(mock.conversation_requests())
        t3 = await client.send_input(s.session_id, "what was my colour?")
        done = await finished(client, s.session_id, t3.turn_id)
        assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wb", done.error_message
    # The model's first request from B (the first to carry turn 3) holds the earlier turns, the
    # tool use and its result included, in order.
    first = mock.conversation_requests()[seen]["messages"]
    assert "what was my colour?" in json.dumps([m for m in first if m["role"] == "user"][-1])
    text = json.dumps(first)
    blocks = [b for m in first if isinstance(m["content"], list) for b in m["content"]]
    [call] = [b for b in blocks if b.get("type") == "tool_use"]
    [result] = [b for b in blocks if b.get("type") == "tool_result"]
    assert call["name"] == "Bash" and call["input"]["command"] == "echo tool-output-from-a"
    assert result["tool_use_id"] == call["id"] and "tool-output-from-a" in json.dumps(result["content"])
    assert text.index("my favourite colour is teal") < text.index("echo tool-output-from-a")
    assert text.index("echo tool-output-from-a") < text.index("what was my colour?")
    b_config = tmp_path / "wb" / "sessions" / s.session_id / "claude-config" / "projects"
    assert list(b_config.glob(f"*/{claude_session_id(s.session_id)}.jsonl"))


async def test_restore_session_moves_a_claude_session_to_a_worker_that_never_saw_it(cp, procs, tmp_path, mock):
    claude_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("claude")
        t1 = await client.send_input(s.session_id, "RUN: echo restored-tool-output")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        claude_worker(procs, cp, tmp_path / "wb", "wb", mock)

        async def b_connected() -> bool:
            return any(w.worker_id == "wb" and w.connected for w in await client.list_workers())

        await eventually(b_connected, timeout=20, what="worker wb connected")
        # Answers once B holds the lease and its rehydrated runtime confirmed with a snapshot.
        moved = await client.restore_session(s.session_id, worker_id="wb", timeout_s=60)
        assert moved.worker_id == "wb" and moved.runtime_thread_id == claude_session_id(s.session_id)
        # Claude's transcript now lives in B's own config directory, written from the history.
        b_config = tmp_path / "wb" / "sessions" / s.session_id / "claude-config" / "projects"
        [transcript] = b_config.glob(f"*/{claude_session_id(s.session_id)}.jsonl")
        assert "restored-tool-output" in transcript.read_text()
        seen = len(mock.conversation_requests())
        t2 = await client.send_input(s.session_id, "and now?")
        done = await finished(client, s.session_id, t2.turn_id)
        assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wb", done.error_message
        sent = json.dumps(mock.conversation_requests()[seen]["messages"])
        assert "echo restored-tool-output" in sent and '"tool_result"' in sent


async def _has_snapshot(client: sdk.AsyncClient, session_id: str, turns: int) -> bool:
    try:
        snap = await client.get_snapshot(session_id)
    except sdk.NotFoundError:
        return False
    return sum(1 for h in snap.history if h.role == sdk.HistoryItemRole.INPUT) >= turns


@pytest.fixture
def cp_long_lease(tmp_path):
    """Leases that outlive a control-plane restart, which on two busy cores can take over 3 s."""
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db", extra=["--lease-ttl-s", "20"])
    cp.start()
    yield cp
    cp.stop()


async def test_a_pending_approval_is_answered_after_a_control_plane_restart(cp_long_lease, procs, tmp_path, mock):
    cp = cp_long_lease
    claude_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("claude")
        t = await client.send_input(s.session_id, "RUN: touch after-restart.txt")
        req = await opened_request(client, s.session_id, t.turn_id)
    cp.stop(signal.SIGKILL)
    cp.start()  # same port, same database
    async with sdk.AsyncClient(cp.target) as client:
        [pending] = await client.list_requests(s.session_id, state="pending")
        assert pending.request_id == req.request_id  # durable: it outlived the control plane
        await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        assert done.worker_id == "wa"
    assert (workspace(tmp_path, "wa", s.session_id) / "after-restart.txt").exists()
