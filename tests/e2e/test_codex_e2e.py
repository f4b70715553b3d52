"""The real Codex CLI through Tether, end to end: `tether serve` and `tether worker --runtime
codex` processes, the pinned `codex app-server` binary, and a mock Responses API on 127.0.0.1.
Everything goes through the SDK, as an application would."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import uuid

import pytest

from tests.helpers.codex_mock import MockResponses, codex_bin
from tests.helpers.processes import ControlPlaneProcess, eventually, start_worker
from tether import sdk
from tether.v1 import resources_pb2 as pb

pytestmark = pytest.mark.skipif(
    codex_bin() is None, reason="the pinned Codex CLI is not installed (run `make test`, which installs it with npm)"
)


@pytest.fixture(scope="module")
def mock():
    with MockResponses(slow_delay_s=0.4) as m:
        yield m


def codex_worker(procs, cp: ControlPlaneProcess, workdir: pathlib.Path, name: str, mock: MockResponses, *extra: str):
    return start_worker(
        procs,
        cp.target,
        workdir,
        name,
        1,
        "--worker-id",
        name,
        *mock.worker_flags(),
        "--codex-sandbox",
        "read-only",
        "--codex-approval-policy",
        "on-request",
        "--codex-home-from",
        str(workdir / "no-user-home"),
        *extra,
    )


@pytest.fixture
def cp(tmp_path, db_url):
    cp = ControlPlaneProcess(tmp_path, db_url, extra=["--worker-dead-grace-s", "0.5"])
    cp.start()
    yield cp
    cp.stop()


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


async def test_a_plain_turn_streams_deltas_items_and_usage(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "hi there")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        events = await events_of(client, s.session_id, t.turn_id)
        deltas = [e.raw.body.item_delta for e in events if kind(e) == "item_delta"]
        assert deltas and all(d.kind == pb.DELTA_KIND_AGENT_MESSAGE for d in deltas)
        reply = "Hello from mock. You said: hi there"
        assert "".join(d.delta for d in deltas) == reply
        messages = [i for i in items(events) if i.kind == pb.ITEM_KIND_AGENT_MESSAGE]
        assert [m.text for m in messages] == [reply] and json.loads(messages[0].raw_json)["type"] == "agentMessage"
        assert any(kind(e) == "token_usage" and e.raw.body.token_usage.total_tokens > 0 for e in events)
        history = [e.raw.body.history_item for e in events if kind(e) == "history_item"]
        assert [json.loads(h.raw_json)["role"] for h in history] == ["user", "assistant"]
        assert events[-1].kind == "turn_completed"

        async def thread_recorded() -> bool:
            return bool((await client.get_session(s.session_id)).runtime_thread_id)

        await eventually(thread_recorded, timeout=20, what="the Codex thread id on the session")


async def test_a_command_approval_is_accepted_then_declined_in_another_turn(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t1 = await client.send_input(s.session_id, "RUN_ESCALATED: touch accepted.txt")
        req = await opened_request(client, s.session_id, t1.turn_id)
        assert req.kind == pb.REQUEST_KIND_COMMAND_APPROVAL and "touch accepted.txt" in req.summary
        assert req.method == "item/commandExecution/requestApproval" and req.state == pb.REQUEST_STATE_PENDING
        await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        with pytest.raises(sdk.FailedPreconditionError, match="already answered"):
            await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "decline"}))
        done = await finished(client, s.session_id, t1.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        events = await events_of(client, s.session_id, t1.turn_id)
        resolved = [e.raw.body.request_resolved for e in events if kind(e) == "request_resolved"]
        assert [(r.request_id, r.state) for r in resolved] == [(req.request_id, pb.REQUEST_STATE_RESOLVED)]
        commands = [i for i in items(events) if i.kind == pb.ITEM_KIND_COMMAND_EXECUTION]
        assert commands and commands[-1].status == "completed" and commands[-1].exit_code == 0
        workspace = tmp_path / "wa" / "sessions" / s.session_id / "workspace"
        assert (workspace / "accepted.txt").exists()

        t2 = await client.send_input(s.session_id, "RUN_ESCALATED: touch declined.txt")
        req2 = await opened_request(client, s.session_id, t2.turn_id)
        await client.respond_to_request(s.session_id, req2.request_id, json.dumps({"decision": "decline"}))
        done2 = await finished(client, s.session_id, t2.turn_id)
        assert done2.state == sdk.TurnState.COMPLETED, done2.error_message
        declined = [
            i
            for i in items(await events_of(client, s.session_id, t2.turn_id))
            if i.kind == pb.ITEM_KIND_COMMAND_EXECUTION
        ]
        assert declined and declined[-1].status == "declined"
        assert not (workspace / "declined.txt").exists()
        # The model was told the command was rejected.
        assert mock.requests_containing("rejected by user")


async def test_a_file_change_approval_round_trips(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "PATCH: new.txt")
        req = await opened_request(client, s.session_id, t.turn_id)
        assert req.kind == pb.REQUEST_KIND_FILE_CHANGE_APPROVAL
        with pytest.raises(sdk.InvalidArgumentError, match="decision"):
            await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "maybe"}))
        await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        changes = [
            i for i in items(await events_of(client, s.session_id, t.turn_id)) if i.kind == pb.ITEM_KIND_FILE_CHANGE
        ]
        assert changes and changes[-1].changes[0].path.endswith("new.txt")
        written = tmp_path / "wa" / "sessions" / s.session_id / "workspace" / "new.txt"
        assert written.read_text() == "patched by the mock\n"


async def test_interrupt_stops_a_streaming_turn_and_the_session_goes_on(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "SLOW please")
        async for e in client.stream_events(s.session_id, timeout_s=60):
            if kind(e) == "item_delta":
                break
        await client.interrupt_turn(s.session_id, t.turn_id, reason="the user pressed stop")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.INTERRUPTED and done.error_message == "the user pressed stop"
        t2 = await client.send_input(s.session_id, "still there?")
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED


async def test_a_model_error_fails_the_turn_with_a_readable_message(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "FAIL500")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.FAILED
        assert len(done.error_message) > 10 and "Traceback" not in done.error_message
        errors = [
            e.raw.body.agent_error for e in await events_of(client, s.session_id, t.turn_id) if kind(e) == "agent_error"
        ]
        assert errors and not errors[-1].will_retry and errors[-1].message


async def test_the_turn_timeout_interrupts_a_tool_loop_and_says_why(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock, "--turn-timeout-s", "2")
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "LOOP forever")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.INTERRUPTED
        assert "turn timeout (2 s)" in done.error_message


async def test_a_pending_request_survives_a_control_plane_restart(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "RUN_ESCALATED: touch after-restart.txt")
        req = await opened_request(client, s.session_id, t.turn_id)
    cp.stop(signal.SIGKILL)
    # Leases reloaded at the restart get this TTL to be renewed: long enough for a worker on a
    # busy machine to reconnect (the default 3 s was missed once under load).
    cp.extra = [*cp.extra, "--lease-ttl-s", "15"]
    cp.start()  # same port, same database
    async with sdk.AsyncClient(cp.target) as client:
        await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        assert done.worker_id == "wa"
    assert (tmp_path / "wa" / "sessions" / s.session_id / "workspace" / "after-restart.txt").exists()


async def test_a_request_whose_worker_died_expires(cp, procs, tmp_path, mock):
    a = codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "RUN_ESCALATED: touch never.txt")
        req = await opened_request(client, s.session_id, t.turn_id)
        a.send_signal(signal.SIGKILL)
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.FAILED
        resolved = [
            e.raw.body.request_resolved
            for e in await events_of(client, s.session_id, t.turn_id)
            if kind(e) == "request_resolved"
        ]
        assert [r.state for r in resolved] == [pb.REQUEST_STATE_EXPIRED] and "wa" in resolved[0].expire_reason
        with pytest.raises(sdk.FailedPreconditionError, match="expired"):
            await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": "accept"}))
        with pytest.raises(sdk.NotFoundError):
            await client.respond_to_request(s.session_id, "req_" + "0" * 26, json.dumps({"decision": "accept"}))


@pytest.mark.parametrize("snapshots", ["after every turn", "none: from the log"])
async def test_a_session_restored_onto_a_fresh_worker_carries_its_history_to_the_model(
    cp, procs, tmp_path, mock, snapshots
):
    every = "1" if snapshots == "after every turn" else "0"
    a = codex_worker(
        procs, cp, tmp_path / "wa", "wa", mock, "--snapshot-every-turns", every, "--snapshot-log-turns", "1"
    )
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t1 = await client.send_input(s.session_id, "remember: my favourite colour is teal")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        t2 = await client.send_input(s.session_id, "RUN: echo tool-output-from-a")
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED
        if every == "1":
            await eventually(
                lambda: _has_snapshot(client, s.session_id, 2), timeout=20, what="A's snapshot of both turns"
            )
        first_thread = (await client.get_session(s.session_id)).runtime_thread_id
        a.send_signal(signal.SIGKILL)
        # B has an empty CODEX_HOME and has never seen the session.
        codex_worker(procs, cp, tmp_path / "wb", "wb", mock)
        t3 = await client.send_input(s.session_id, "what was my colour?")
        done = await finished(client, s.session_id, t3.turn_id)
        assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wb", done.error_message
        # The model request B sent for turn 3 carries the earlier conversation, tool call included.
        sent = mock.requests_containing("what was my colour?")[0]["input"]
        kinds = [(i.get("type"), i.get("role")) for i in sent]
        text = json.dumps(sent)
        assert "my favourite colour is teal" in text
        calls = [i for i in sent if i.get("type") == "function_call"]
        outputs = [i for i in sent if i.get("type") == "function_call_output"]
        assert calls and "echo tool-output-from-a" in calls[0]["arguments"], kinds
        assert outputs and "tool-output-from-a" in outputs[0]["output"] and outputs[0]["call_id"] == calls[0]["call_id"]
        assert text.index("my favourite colour is teal") < text.index("what was my colour?")

        async def new_thread() -> bool:
            thread = (await client.get_session(s.session_id)).runtime_thread_id
            return bool(thread) and thread != first_thread

        await eventually(new_thread, timeout=20, what="B's new Codex thread id on the session")
        assert (await client.get_session(s.session_id)).session_id == s.session_id


async def _has_snapshot(client: sdk.AsyncClient, session_id: str, turns: int) -> bool:
    try:
        snap = await client.get_snapshot(session_id)
    except sdk.NotFoundError:
        return False
    return sum(1 for h in snap.history if h.role == sdk.HistoryItemRole.INPUT) >= turns


async def test_a_restore_that_cannot_rehydrate_fails_closed(cp, procs, tmp_path, mock):
    a = codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t1 = await client.send_input(s.session_id, "remember: the password is swordfish")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        a.send_signal(signal.SIGKILL)
        # A Codex that passes the start check but whose app-server cannot run.
        broken_bin = tmp_path / "broken-codex"
        broken_bin.write_text(
            '#!/bin/sh\nif [ "$1" = --version ]; then echo "codex-cli 0.169.0"; exit 0; fi\n'
            "echo 'this codex cannot run' >&2\nexit 1\n"
        )
        broken_bin.chmod(0o755)
        broken = codex_worker(procs, cp, tmp_path / "wb", "wb", mock, "--codex-bin", str(broken_bin))
        t2 = await client.send_input(s.session_id, "what is the password?")
        done = await finished(client, s.session_id, t2.turn_id)
        assert done.state == sdk.TurnState.FAILED and "rehydrate" in done.error_message
        assert not mock.requests_containing("what is the password?"), "an empty thread ran the turn"
        broken.stop()


async def test_restore_session_moves_a_codex_session_to_a_worker_with_an_empty_home(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t1 = await client.send_input(s.session_id, "RUN: echo restored-tool-output")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        first_thread = (await client.get_session(s.session_id)).runtime_thread_id
        codex_worker(procs, cp, tmp_path / "wb", "wb", mock)

        async def b_connected() -> bool:
            return any(w.worker_id == "wb" and w.connected for w in await client.list_workers())

        await eventually(b_connected, timeout=20, what="worker wb connected")
        # Answers once B holds the lease and its rehydrated runtime confirmed with a snapshot.
        moved = await client.restore_session(s.session_id, worker_id="wb", timeout_s=60)
        assert moved.worker_id == "wb" and moved.session_id == s.session_id
        assert moved.runtime_thread_id and moved.runtime_thread_id != first_thread
        # The new thread lives in B's own CODEX_HOME, which held nothing of the session before.
        b_home = tmp_path / "wb" / "sessions" / s.session_id / "codex-home"
        assert any(moved.runtime_thread_id in p.name for p in b_home.rglob("rollout-*.jsonl"))
        t2 = await client.send_input(s.session_id, "and now?")
        done = await finished(client, s.session_id, t2.turn_id)
        assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wb", done.error_message
        sent = json.dumps(mock.requests_containing("and now?")[0]["input"])
        assert "echo restored-tool-output" in sent and sent.count("restored-tool-output") >= 2


async def test_a_turn_lost_with_its_worker_is_marked_for_the_model(cp, procs, tmp_path, mock):
    a = codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t1 = await client.send_input(s.session_id, "remember: the lost-turn colour is teal")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        t2 = await client.send_input(s.session_id, "SLOW lost-turn-work")
        async for e in client.stream_events(s.session_id, timeout_s=60):
            if e.turn_id == t2.turn_id and kind(e) == "item_delta":
                break  # the model is answering on A
        a.send_signal(signal.SIGKILL)
        lost = await finished(client, s.session_id, t2.turn_id)
        assert lost.state == sdk.TurnState.FAILED
        ended = [e for e in await events_of(client, s.session_id, t2.turn_id) if kind(e) == "turn_failed"]
        assert ended and ended[-1].raw.body.turn_failed.worker_lost
        codex_worker(procs, cp, tmp_path / "wb", "wb", mock)
        t3 = await client.send_input(s.session_id, "did the last one finish?")
        done = await finished(client, s.session_id, t3.turn_id)
        assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wb", done.error_message
    # The first model request B sent: the lost turn's input, then Codex's own aborted-turn
    # marker, then the new input; never the lost input as the last word.
    sent = mock.requests_containing("did the last one finish?")[0]["input"]
    users = [
        "".join(p.get("text", "") for p in i.get("content") or [])
        for i in sent
        if i.get("type") == "message" and i.get("role") == "user"
    ]
    lost_at = users.index("SLOW lost-turn-work")
    marker = users[lost_at + 1]
    assert marker.startswith("<turn_aborted>") and marker.endswith("</turn_aborted>") and "lost" in marker
    assert users[-1] == "did the last one finish?"
    assert users[0] == "remember: the lost-turn colour is teal"


async def test_an_approval_takes_exactly_the_decisions_it_lists(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "RUN_ESCALATED: touch amended.txt")
        req = await opened_request(client, s.session_id, t.turn_id)
        listed = list(req.available_decisions)
        # Every name Codex takes, including the two its own list leaves out.
        assert {"accept", "acceptForSession", "decline", "cancel"} <= set(listed)
        amendment = {"acceptWithExecpolicyAmendment": {"execpolicy_amendment": ["touch", "amended.txt"]}}
        assert [json.loads(d) for d in listed if d.startswith("{")] == [amendment]
        # What Codex would refuse is INVALID_ARGUMENT here, naming what is taken; the request
        # stays pending.
        for wrong in ("acceptWithExecpolicyAmendment", {"acceptWithExecpolicyAmendment": {}}):
            with pytest.raises(sdk.InvalidArgumentError) as refused:
                await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": wrong}))
            assert '{"decision": "decline"}' in refused.value.message
            assert json.dumps({"decision": amendment}) in refused.value.message
        pending = await client.list_requests(s.session_id)
        assert [(r.request_id, r.state) for r in pending] == [(req.request_id, sdk.RequestState.PENDING)]
        resolved = await client.respond_to_request(s.session_id, req.request_id, json.dumps({"decision": amendment}))
        assert resolved.state == sdk.RequestState.RESOLVED
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        events = await events_of(client, s.session_id, t.turn_id)
        assert not [e for e in events if kind(e) == "agent_error"]
        assert (tmp_path / "wa" / "sessions" / s.session_id / "workspace" / "amended.txt").exists()


async def test_a_worker_does_not_offer_a_codex_that_cannot_run(cp, procs, tmp_path, mock):
    # Codex alone, and no codex binary: the worker stops at once, with one line naming the fix.
    args = [sys.executable, "-m", "tether.execution_worker", "--control-plane", cp.target]
    alone = procs(
        [*args, "--workdir", str(tmp_path / "wx"), "--runtime", "codex", "--codex-bin", str(tmp_path / "no-codex")],
        "wx",
    )
    assert alone.popen.wait(timeout=60) == 2
    lines = [line for line in alone.log_path.read_text().splitlines() if "codex" in line]
    assert len(lines) == 1 and "--codex-bin node_modules/.bin/codex" in lines[0], lines
    assert "Traceback" not in alone.log_path.read_text()
    # With another runtime, it runs without codex: a Codex outside the supported range...
    old = tmp_path / "old-codex"
    old.write_text('#!/bin/sh\necho "codex-cli 0.150.0"\n')
    old.chmod(0o755)
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock, "--codex-bin", str(old))
    # ... or no credentials for the default model provider (no --codex-config, an empty home).
    start_worker(
        procs,
        cp.target,
        tmp_path / "wb",
        "wb",
        1,
        "--worker-id",
        "wb",
        "--runtime",
        "codex",
        "--codex-bin",
        str(codex_bin()),
        "--codex-home-from",
        str(tmp_path / "empty-home"),
    )
    async with sdk.AsyncClient(cp.target) as client:

        async def both_registered() -> bool:
            return {w.worker_id for w in await client.list_workers() if w.connected} >= {"wa", "wb"}

        await eventually(both_registered, timeout=30, what="workers wa and wb registered")
        assert {w.worker_id: w.runtimes for w in await client.list_workers() if w.worker_id in ("wa", "wb")} == {
            "wa": ["shell"],
            "wb": ["shell"],
        }
    wa_log = (tmp_path / "wa.log").read_text()
    assert "not offering the codex runtime: codex 0.150.0" in wa_log and "not a supported version" in wa_log
    wb_log = (tmp_path / "wb.log").read_text()
    assert "not offering the codex runtime: no credentials" in wb_log and "`codex login`" in wb_log


async def test_the_readme_command_with_relative_paths_runs_codex_turns(cp, procs, tmp_path, mock, monkeypatch):
    """`tether worker --workdir ./codex-worker --codex-bin node_modules/.bin/codex`: the worker
    processes of these tests run in the repository root, so both paths are relative to it."""
    root = pathlib.Path(__file__).resolve().parents[2]
    if not (root / "node_modules/.bin/codex").exists():
        pytest.skip("node_modules/.bin/codex is not installed")
    workdir = pathlib.Path(os.path.relpath(tmp_path / "codex-worker", root))
    assert not workdir.is_absolute()
    monkeypatch.chdir(root)  # where the helper creates the workdir, as the worker sees it
    codex_worker(procs, cp, workdir, "wr", mock, "--codex-bin", "node_modules/.bin/codex")
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t = await client.send_input(s.session_id, "hi from a relative workdir")
        done = await finished(client, s.session_id, t.turn_id)
        assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wr", done.error_message
    assert (tmp_path / "codex-worker" / "sessions" / s.session_id / "codex-home").is_dir()


def _conversation(request_input: list[dict]) -> list[tuple]:
    """The model-visible conversation a request carries: messages, tool calls and their outputs
    (what the model reads; item ids and Codex's own context messages left aside)."""
    seen = []
    for item in request_input:
        kind = item.get("type")
        if kind == "message" and item.get("role") in ("user", "assistant"):
            texts = tuple(c.get("text", "") for c in item.get("content", []) if isinstance(c, dict))
            if any(t.startswith("<") for t in texts):
                continue  # Codex's environment context and instructions, not the conversation
            seen.append((item["role"], texts))
        elif kind == "function_call":
            seen.append(("call", item.get("call_id"), item.get("arguments")))
        elif kind == "function_call_output":
            seen.append(("output", item.get("call_id"), str(item.get("output"))))
    return seen


async def test_a_forks_first_model_request_carries_the_history_up_to_the_fork_turn_and_nothing_after(
    cp, procs, tmp_path, mock
):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    ask = f"what do you know about me? ({uuid.uuid4().hex[:8]})"  # the mock outlives one test
    pet = f"remember: my pet is a heron ({uuid.uuid4().hex[:8]})"
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t1 = await client.send_input(s.session_id, "remember: my favourite colour is amber")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        t2 = await client.send_input(s.session_id, "RUN: echo fork-tool-output")
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED
        t3 = await client.send_input(s.session_id, pet)
        assert (await finished(client, s.session_id, t3.turn_id)).state == sdk.TurnState.COMPLETED

        fork = await client.fork_session(s.session_id, t2.turn_id)
        t4 = await client.send_input(fork.session_id, ask)
        done = await finished(client, fork.session_id, t4.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message

        [first_in_fork] = mock.requests_containing(ask)
        [parent_turn_3] = mock.requests_containing(pet)[:1]
        fork_seen = _conversation(first_in_fork["input"])
        parent_seen = _conversation(parent_turn_3["input"])
        # Everything before the new input is exactly what the parent's model saw before turn 3.
        assert fork_seen[-1] == ("user", (ask,))
        assert parent_seen[-1] == ("user", (pet,))
        assert fork_seen[:-1] == parent_seen[:-1] and len(fork_seen) > 3, fork_seen
        assert "heron" not in json.dumps(first_in_fork["input"])
        assert (await client.get_session(s.session_id)).turn_count == 3


async def test_after_a_revert_the_model_no_longer_sees_the_reverted_turns(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    secret = f"remember: the launch code is {uuid.uuid4().hex[:8]}"
    ask = f"what do you remember? ({uuid.uuid4().hex[:8]})"
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        t1 = await client.send_input(s.session_id, "remember: my favourite colour is amber")
        assert (await finished(client, s.session_id, t1.turn_id)).state == sdk.TurnState.COMPLETED
        t2 = await client.send_input(s.session_id, secret)
        assert (await finished(client, s.session_id, t2.turn_id)).state == sdk.TurnState.COMPLETED
        t3 = await client.send_input(s.session_id, "RUN: echo reverted-tool-output")
        assert (await finished(client, s.session_id, t3.turn_id)).state == sdk.TurnState.COMPLETED

        reverted = await client.revert_session(s.session_id, t1.turn_id)
        assert reverted.worker_id == ""  # the warm runtime is gone with the lease
        t4 = await client.send_input(s.session_id, ask)
        done = await finished(client, s.session_id, t4.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message

        [sent] = mock.requests_containing(ask)
        seen = _conversation(sent["input"])
        text = json.dumps(sent["input"])
        assert seen[-1] == ("user", (ask,))
        assert "my favourite colour is amber" in text
        assert secret not in text and "reverted-tool-output" not in text, seen
        assert (await client.get_turn(s.session_id, t2.turn_id)).reverted


async def test_a_typed_result_is_asked_of_the_model_and_checked_before_the_turn_completes(cp, procs, tmp_path, mock):
    codex_worker(procs, cp, tmp_path / "wa", "wa", mock)
    tag = uuid.uuid4().hex[:8]
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}, "tag": {"type": "string"}},
        "required": ["answer", "tag"],
        "additionalProperties": False,
    }
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        good = await client.send_input(s.session_id, f'JSON: {{"answer": 42, "tag": "{tag}"}}', output_schema=schema)
        done = await finished(client, s.session_id, good.turn_id)
        assert done.state == sdk.TurnState.COMPLETED, done.error_message
        assert done.result == {"answer": 42, "tag": tag} and json.loads(done.output_schema) == schema
        # Codex asked the model for that shape.
        [sent] = mock.requests_containing(tag)
        asked = sent["text"]["format"]
        assert asked["type"] == "json_schema" and asked["schema"]["properties"] == schema["properties"]

        bad = await client.send_input(s.session_id, f'JSON: {{"answer": "many", "tag": "{tag}"}}', output_schema=schema)
        failed = await finished(client, s.session_id, bad.turn_id)
        assert failed.state == sdk.TurnState.FAILED and failed.result is None
        assert "at $.answer: 'many' is not of type 'integer'" in failed.error_message
        last = (await events_of(client, s.session_id, bad.turn_id))[-1]
        assert kind(last) == "turn_failed" and last.raw.lease_epoch == 0  # the control plane ended it
        plain = await client.send_input(s.session_id, "and now without a schema")
        assert (await finished(client, s.session_id, plain.turn_id)).state == sdk.TurnState.COMPLETED
