"""A thread run with the plain Codex CLI (`codex exec`, then `codex exec resume`), with a private
CODEX_HOME against the mock Responses API, imported as a Tether bundle
(`tether.sdk.codex_import`): the bundle's turns, inputs, final messages and history are what the
model was served and sent, and the history a worker rebuilds from the bundle reaches the model
of a fresh Codex runtime as the next turn's conversation."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import uuid
from typing import Any

import pytest
from google.protobuf import json_format

from tests.helpers.codex_mock import MockResponses, codex_bin
from tests.helpers.processes import ROOT, ControlPlaneProcess, start_worker
from tether import sdk
from tether.execution_worker import CodexRuntime, CodexSettings, HistoryAppended, TurnCompleted
from tether.execution_worker._convert import history_from_resume
from tether.sdk.codex_import import bundle_from_rollout, find_rollout
from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb

pytestmark = pytest.mark.skipif(
    codex_bin() is None, reason="the pinned Codex CLI is not installed (run `make test`, which installs it with npm)"
)

TETHER = ROOT / ".venv" / "bin" / "tether"

# What Codex writes into every thread itself, which a worker's Codex writes anew.
_CONTEXT = ("<environment_context>", "<user_instructions>", "# AGENTS.md instructions for")


@pytest.fixture(scope="module")
def mock():
    with MockResponses() as m:
        yield m


def codex_exec(mock: MockResponses, home: pathlib.Path, workdir: pathlib.Path, *args: str) -> list[dict[str, Any]]:
    """`codex exec --json ARGS` with CODEX_HOME=`home`, offline against the mock; its JSON events."""
    config = ["-m", "mock-model", "-c", 'sandbox_mode="workspace-write"']
    for override in (*mock.codex_config(), "features.plugins=false", "analytics.enabled=false"):
        config += ["-c", override]
    if args[0] == "resume":  # `codex exec resume` takes the options after its name
        args = ("resume", *config, *args[1:])
    else:
        args = (*config, *args)
    done = subprocess.run(
        [str(codex_bin()), "exec", "--skip-git-repo-check", "--json", *args],
        cwd=workdir,
        env={**os.environ, "CODEX_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def model_visible(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A model request's input without what Codex writes itself (developer prompts, context)."""
    kept = []
    for item in items:
        if item.get("type") == "message" and item.get("role") == "developer":
            continue
        if item.get("type") == "message" and item.get("role") == "user":
            text = "".join(p.get("text", "") for p in item.get("content") or [] if isinstance(p, dict))
            if text.lstrip().startswith(_CONTEXT):
                continue
        kept.append(item)
    return kept


def parse(data: bytes) -> tuple[pb.Session, list[pb.Turn], list[pb.Event], dict[str, int]]:
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert rows[0]["tether_bundle"] == 1 and "end" in rows[-1]
    session = json_format.ParseDict(rows[1]["session"], pb.Session())
    turns = [json_format.ParseDict(r["turn"], pb.Turn()) for r in rows if "turn" in r]
    events = [json_format.ParseDict(r["event"], pb.Event()) for r in rows if "event" in r]
    return session, turns, events, rows[-1]["end"]


async def test_a_codex_cli_thread_imports_with_its_history_intact(mock, tmp_path):
    home, workdir = tmp_path / "codex-home", tmp_path / "project"
    home.mkdir()
    workdir.mkdir()
    tag = uuid.uuid4().hex[:8]
    first = f"remember: my favourite colour is teal ({tag})"
    second = f"RUN: echo import-tool-output-{tag}"
    started = codex_exec(mock, home, workdir, first)
    thread_id = next(e["thread_id"] for e in started if e.get("type") == "thread.started")
    codex_exec(mock, home, workdir, "resume", thread_id, second)
    # The last model request of turn 2 carried everything the thread's model saw before its reply.
    [last_request] = [
        r for r in mock.requests_containing(f"import-tool-output-{tag}") if r["input"][-1]["type"].endswith("_output")
    ]

    path = find_rollout(home, thread_id)
    assert path.is_relative_to(home / "sessions") and path.name.endswith(f"-{thread_id}.jsonl")
    session, turns, events, end = parse(bundle_from_rollout(path))

    assert session.runtime == "codex" and session.title == first
    assert session.labels["imported-from"] == "codex" and session.labels["codex-thread-id"] == thread_id
    assert end == {"turns": 2, "events": len(events), "requests": 0, "snapshots": 0}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [t.input for t in turns] == [first, second]
    assert [t.state for t in turns] == [pb.TURN_STATE_COMPLETED, pb.TURN_STATE_COMPLETED]
    assert turns[0].final_message == f"Hello from mock. You said: {first}"
    assert (
        turns[1].final_message.startswith("Done. The tool said: ")
        and f"import-tool-output-{tag}" in turns[1].final_message
    )
    assert (turns[0].first_seq, turns[1].last_seq) == (1, len(events)) and turns[1].first_seq == turns[0].last_seq + 1
    assert all(t.usage.total_tokens > 0 for t in turns)
    commands = [
        e.body.item_completed.item
        for e in events
        if e.body.WhichOneof("kind") == "item_completed"
        and e.body.item_completed.item.kind == pb.ITEM_KIND_COMMAND_EXECUTION
    ]
    assert len(commands) == 1 and f"echo import-tool-output-{tag}" in commands[0].command
    assert commands[0].exit_code == 0 and f"import-tool-output-{tag}" in commands[0].aggregated_output

    history = [e.body.history_item for e in events if e.body.WhichOneof("kind") == "history_item"]
    raw = [json.loads(h.raw_json) for h in history]
    # Exactly the items the model was sent, then its final reply, which no request carried yet.
    assert raw[:-1] == model_visible(last_request["input"])
    assert raw[-1]["role"] == "assistant" and raw[-1]["content"][0]["text"] == turns[1].final_message
    assert [r["type"] for r in raw] == [
        "message",
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    assert [h.turn_id for h in history] == [turns[0].turn_id] * 2 + [turns[1].turn_id] * 4

    # The imported session's next turn: a worker rebuilds the history from the log (no snapshot)
    # and hands it to a fresh Codex, whose model then sees the whole conversation.
    rebuilt = history_from_resume([wpb.ResumeResponse(events=events)], skip_turn_id="trn_next")
    settings = CodexSettings(
        bin=str(codex_bin()), model="mock-model", config=mock.codex_config(), home_from=tmp_path / "no-user-home"
    )
    runtime = CodexRuntime(settings)
    ask = f"what was my colour? ({tag})"
    try:
        await runtime.start(session.session_id, tmp_path / "worker", rebuilt)
        ran = [e async for e in runtime.run_turn("trn_next", ask)]
    finally:
        await runtime.close()
    assert isinstance(ran[-1], TurnCompleted), ran[-1]
    [sent] = mock.requests_containing(ask)
    assert model_visible(sent["input"])[:-1] == raw
    assert model_visible(sent["input"])[-1]["content"][0]["text"] == ask
    recorded = [json.loads(e.item.raw_json) for e in ran if isinstance(e, HistoryAppended)]
    assert recorded[0]["content"][0]["text"] == ask  # the new turn records only its own items


async def test_an_imported_codex_thread_runs_its_next_turn_on_a_remote_worker(mock, tmp_path, procs):
    """`tether session import-codex --thread-id` into a real control plane, then the session's
    next turn on a Codex worker that never saw the thread: the model's request carries the
    thread's history, tool call and output included."""
    home, workdir = tmp_path / "codex-home", tmp_path / "laptop"
    home.mkdir()
    workdir.mkdir()
    tag = uuid.uuid4().hex[:8]
    first = f"remember: my favourite tree is the rowan ({tag})"
    started = codex_exec(mock, home, workdir, first)
    thread_id = next(e["thread_id"] for e in started if e.get("type") == "thread.started")
    codex_exec(mock, home, workdir, "resume", thread_id, f"RUN: echo remote-import-{tag}")
    raw = [
        json.loads(e.body.history_item.raw_json)
        for e in parse(bundle_from_rollout(find_rollout(home, thread_id)))[2]
        if e.body.WhichOneof("kind") == "history_item"
    ]

    cp = ControlPlaneProcess(tmp_path, str(tmp_path / "tether.db"))
    cp.start()
    try:
        imported = subprocess.run(
            [
                str(TETHER),
                "session",
                "--control-plane",
                cp.target,
                "import-codex",
                "--thread-id",
                thread_id,
                "--codex-home",
                str(home),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert imported.returncode == 0, imported.stderr
        session_id = imported.stdout.strip()
        start_worker(
            procs,
            cp.target,
            tmp_path / "remote",
            "remote",
            1,
            "--worker-id",
            "remote",
            *mock.worker_flags(),
            "--codex-home-from",
            str(tmp_path / "no-user-home"),
        )
        ask = f"which tree did I name? ({tag})"
        async with sdk.AsyncClient(cp.target) as client:
            session = await client.get_session(session_id)
            assert (session.runtime, session.turn_count, session.title) == ("codex", 2, first)
            turn = await client.send_input(session_id, ask)
            done = await client.wait_for_turn(session_id, turn.turn_id, timeout_s=60)
            assert done.state == sdk.TurnState.COMPLETED, done.error_message
            assert done.worker_id == "remote"
        [sent] = mock.requests_containing(ask)
        assert model_visible(sent["input"])[:-1] == raw
        assert f"remote-import-{tag}" in json.dumps(sent["input"])
    finally:
        cp.stop()
