"""The Claude Code runtime on its own, against the real `claude` CLI (pinned in package.json) and
a mock Anthropic Messages API on 127.0.0.1: streaming, tool uses, permission prompts as pending
requests, interrupts, API failures, history and rehydration, failing closed."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.helpers.anthropic_mock import MODEL, MockAnthropic, claude_bin
from tether.execution_worker._claude import ClaudeError, ClaudeRuntime
from tether.execution_worker._claude_settings import ClaudeSettings, claude_session_id
from tether.execution_worker._claude_transcript import history_item
from tether.execution_worker._convert import LOST_TURN_MARKER
from tether.execution_worker.runtime import (
    AgentError,
    DeltaKind,
    HistoryAppended,
    HistoryItem,
    HistoryRole,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    RequestKind,
    RequestOpened,
    TokenUsage,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)

CLAUDE = claude_bin()
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed (run `npm ci`; `make test` does)")
TERMINAL = (TurnCompleted, TurnFailed, TurnInterrupted)
Answer = Callable[[RequestOpened], dict[str, Any]]


@pytest.fixture(scope="module")
def mock_api():
    with MockAnthropic(slow_delay_s=0.3) as mock:
        yield mock


@pytest.fixture
def env(mock_api: MockAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in mock_api.env().items():
        monkeypatch.setenv(key, value)


def settings_for(tmp_path: pathlib.Path, **overrides: Any) -> ClaudeSettings:
    values: dict[str, Any] = {
        "bin": str(CLAUDE),
        "model": MODEL,
        "max_retries": 0,
        # Never the real user's ~/.claude: tests must not depend on (or leak) a login.
        "config_from": tmp_path / "no-user-config",
        "request_timeout_s": 30.0,
    }
    values.update(overrides)
    return ClaudeSettings(**values)


@pytest.fixture
async def claude(env: None, tmp_path: pathlib.Path) -> AsyncIterator[ClaudeRuntime]:
    runtime = ClaudeRuntime(settings_for(tmp_path))
    await runtime.start("ses_test", tmp_path, [])
    yield runtime
    await runtime.close()


async def run(runtime: ClaudeRuntime, text: str, turn_id: str = "trn_1", answer: Answer | None = None) -> list:
    """Every event of one turn; requests are answered with `answer(request)` as they open."""
    events = []
    async with asyncio.timeout(60):
        async for event in runtime.run_turn(turn_id, text):
            events.append(event)
            if isinstance(event, RequestOpened):
                assert answer is not None, f"unexpected request {event}"
                assert await runtime.respond(event.request_id, answer(event))
                assert not await runtime.respond(event.request_id, answer(event))  # only once
    assert sum(isinstance(e, TERMINAL) for e in events) == 1 and isinstance(events[-1], TERMINAL)
    return events


def of_type(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def completed(events: list, kind: ItemKind) -> list:
    return [e.item for e in of_type(events, ItemCompleted) if e.item.kind is kind]


def history_of(events: list) -> list[HistoryItem]:
    return [e.item for e in of_type(events, HistoryAppended)]


def decision(name: str) -> Answer:
    return lambda request: {"decision": name}


async def test_a_turn_streams_deltas_then_the_message_usage_and_history(
    claude: ClaudeRuntime, tmp_path: pathlib.Path
) -> None:
    events = await run(claude, "hi there")
    reply = "Hello from mock. You said: hi there"
    assert events[-1] == TurnCompleted()
    deltas = [e for e in of_type(events, ItemDelta) if e.kind is DeltaKind.AGENT_MESSAGE]
    assert len(deltas) > 1 and "".join(d.delta for d in deltas) == reply
    [message] = completed(events, ItemKind.AGENT_MESSAGE)
    assert message.text == reply and {d.item_id for d in deltas} == {message.item_id}
    started = [e.item for e in of_type(events, ItemStarted) if e.item.kind is ItemKind.AGENT_MESSAGE]
    assert [i.item_id for i in started] == [message.item_id]
    [usage] = of_type(events, TokenUsage)
    assert usage.last_output_tokens > 0 and usage.total_tokens >= usage.last_input_tokens + usage.last_output_tokens
    history = history_of(events)
    assert [(h.role, h.text) for h in history] == [(HistoryRole.INPUT, "hi there"), (HistoryRole.OUTPUT, reply)]
    assert json.loads(history[1].raw_json)["content"] == [{"type": "text", "text": reply}]
    assert claude.export_history() == history
    # Claude's session is the Tether session's, in the session's own config directory.
    assert claude.runtime_thread_id == claude_session_id("ses_test")
    assert claude.transcript_path is not None and claude.transcript_path.is_file()
    assert claude.config_dir == tmp_path / "sessions" / "ses_test" / "claude-config"


async def test_a_command_is_asked_first_then_runs_when_accepted(claude: ClaudeRuntime) -> None:
    events = await run(claude, "RUN: touch made.txt", answer=decision("accept"))
    assert events[-1] == TurnCompleted()
    [request] = of_type(events, RequestOpened)
    assert request.kind is RequestKind.COMMAND_APPROVAL and request.method == "can_use_tool"
    assert "touch made.txt" in request.summary
    assert request.available_decisions == ("accept", "acceptForSession", "decline", "cancel")
    assert json.loads(request.params_json)["tool_name"] == "Bash"
    assert claude.workspace is not None and (claude.workspace / "made.txt").exists()
    [started] = [e.item for e in of_type(events, ItemStarted) if e.item.kind is ItemKind.COMMAND_EXECUTION]
    [command] = completed(events, ItemKind.COMMAND_EXECUTION)
    assert command.item_id == started.item_id == request.item_id
    assert command.command == "touch made.txt" and command.status == "completed" and command.exit_code == 0
    roles = [h.role for h in history_of(events)]
    assert roles == [HistoryRole.INPUT, HistoryRole.TOOL_CALL, HistoryRole.TOOL_OUTPUT, HistoryRole.OUTPUT]


async def test_a_declined_command_does_not_run_and_the_turn_goes_on(claude: ClaudeRuntime) -> None:
    events = await run(claude, "RUN: touch declined.txt", answer=decision("decline"))
    assert events[-1] == TurnCompleted()
    assert claude.workspace is not None and not (claude.workspace / "declined.txt").exists()
    [command] = completed(events, ItemKind.COMMAND_EXECUTION)
    assert command.status == "failed" and "declined" in command.aggregated_output
    [reply] = completed(events, ItemKind.AGENT_MESSAGE)
    assert "declined" in reply.text


async def test_cancel_denies_and_stops_the_turn(claude: ClaudeRuntime) -> None:
    events = await run(claude, "RUN: touch cancelled.txt", answer=decision("cancel"))
    assert isinstance(events[-1], TurnInterrupted)
    assert claude.workspace is not None and not (claude.workspace / "cancelled.txt").exists()
    assert (await run(claude, "still there?", "trn_2"))[-1] == TurnCompleted()


async def test_accept_for_session_is_not_asked_again(claude: ClaudeRuntime) -> None:
    first = await run(claude, "RUN: touch again.txt", answer=decision("acceptForSession"))
    assert len(of_type(first, RequestOpened)) == 1 and first[-1] == TurnCompleted()
    second = await run(claude, "RUN: touch again.txt", "trn_2")
    assert of_type(second, RequestOpened) == [] and second[-1] == TurnCompleted()


async def test_the_model_api_failing_fails_the_turn_readably(claude: ClaudeRuntime) -> None:
    events = await run(claude, "FAIL500 please")
    assert isinstance(events[-1], TurnFailed)
    assert "500" in events[-1].error_message and "mock: internal server error" in events[-1].error_message
    assert any("500" in e.message for e in of_type(events, AgentError))
    # Only the input stays in the history: Claude's error message was never the model's.
    assert [h.role for h in history_of(events)] == [HistoryRole.INPUT]
    assert (await run(claude, "and now?", "trn_2"))[-1] == TurnCompleted()


async def test_interrupt_stops_the_turn_and_the_session_goes_on(claude: ClaudeRuntime) -> None:
    events: list = []
    streaming = asyncio.Event()

    async def consume() -> None:
        async for event in claude.run_turn("trn_1", "SLOW one two three four five six seven eight"):
            events.append(event)
            if isinstance(event, ItemDelta):
                streaming.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(streaming.wait(), 30)
    await claude.interrupt("stop it")
    await asyncio.wait_for(task, 10)
    assert events[-1] == TurnInterrupted("stop it")
    after = await run(claude, "are you there?", "trn_2")
    assert after[-1] == TurnCompleted()


async def test_a_worker_that_never_saw_the_session_resumes_it_from_the_history(
    env: None, mock_api: MockAnthropic, tmp_path: pathlib.Path
) -> None:
    first = ClaudeRuntime(settings_for(tmp_path))
    await first.start("ses_moved", tmp_path / "w1", [])
    try:
        await run(first, "RUN: echo MOVED-OUTPUT-7")
        history = first.export_history()
    finally:
        await first.close()
    assert [h.role for h in history] == [
        HistoryRole.INPUT,
        HistoryRole.TOOL_CALL,
        HistoryRole.TOOL_OUTPUT,
        HistoryRole.OUTPUT,
    ]
    seen = len(mock_api.conversation_requests())
    second = ClaudeRuntime(settings_for(tmp_path))
    await second.start("ses_moved", tmp_path / "w2", history)
    try:
        events = await run(second, "what did the command print?", "trn_2")
    finally:
        await second.close()
    assert events[-1] == TurnCompleted()
    request = mock_api.conversation_requests()[seen]
    sent = json.dumps(request["messages"])
    tool_use_id = json.loads(history[1].raw_json)["content"][0]["id"]
    assert "RUN: echo MOVED-OUTPUT-7" in sent
    blocks = [b for m in request["messages"] if isinstance(m["content"], list) for b in m["content"]]
    assert any(b.get("type") == "tool_use" and b.get("id") == tool_use_id for b in blocks)
    assert any(
        b.get("type") == "tool_result" and b.get("tool_use_id") == tool_use_id and "MOVED-OUTPUT-7" in str(b["content"])
        for b in blocks
    )
    assert any(b.get("type") == "text" and b.get("text") == "what did the command print?" for b in blocks)
    assert second.runtime_thread_id == claude_session_id("ses_moved")


async def test_history_from_elsewhere_is_rendered_as_messages(
    env: None, mock_api: MockAnthropic, tmp_path: pathlib.Path
) -> None:
    history = [
        HistoryItem(HistoryRole.INPUT, "echo earlier", "trn_0"),
        HistoryItem(HistoryRole.OUTPUT, "EARLIER-REPLY-3", "trn_0"),
    ]
    runtime = ClaudeRuntime(settings_for(tmp_path))
    await runtime.start("ses_rendered", tmp_path, history)
    try:
        seen = len(mock_api.conversation_requests())
        assert (await run(runtime, "next", "trn_1"))[-1] == TurnCompleted()
    finally:
        await runtime.close()
    sent = json.dumps(mock_api.conversation_requests()[seen]["messages"])
    assert "echo earlier" in sent and "EARLIER-REPLY-3" in sent


async def test_history_that_cannot_be_restored_fails_the_start(env: None, tmp_path: pathlib.Path) -> None:
    broken = [HistoryItem(HistoryRole.OUTPUT, "x", "trn_0", raw_json="{not json")]
    runtime = ClaudeRuntime(settings_for(tmp_path))
    with pytest.raises(ClaudeError, match="could not rehydrate the claude session: history item 0"):
        await runtime.start("ses_broken", tmp_path, broken)
    await runtime.close()


async def test_a_resume_claude_refuses_fails_the_start(
    env: None, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claude finds no transcript where it looks: the start fails with Claude's own reason.
    monkeypatch.setattr("tether.execution_worker._claude.write_transcript", lambda path, **kwargs: 1)
    runtime = ClaudeRuntime(settings_for(tmp_path))
    with pytest.raises(ClaudeError, match="rehydrating the claude session failed: .*No conversation found"):
        await runtime.start("ses_gone", tmp_path, [HistoryItem(HistoryRole.INPUT, "hello", "trn_0")])
    await runtime.close()
    assert runtime.pid is None


async def test_a_missing_binary_fails_the_start(env: None, tmp_path: pathlib.Path) -> None:
    runtime = ClaudeRuntime(settings_for(tmp_path, bin=str(tmp_path / "no-such-claude")))
    with pytest.raises(ClaudeError, match="could not run"):
        await runtime.start("ses_nobin", tmp_path, [])
    await runtime.close()


async def test_a_turn_lost_with_its_worker_reaches_the_model_with_its_marker(
    env: None, mock_api: MockAnthropic, tmp_path: pathlib.Path
) -> None:
    # What the worker hands over for a turn that died with its worker: the input Claude had,
    # then the marker (an INPUT item without raw JSON), then nothing from the assistant.
    history = [
        history_item({"role": "user", "content": [{"type": "text", "text": "RUN: make deploy"}]}, "trn_0"),
        HistoryItem(HistoryRole.INPUT, LOST_TURN_MARKER, "trn_0"),
    ]
    runtime = ClaudeRuntime(settings_for(tmp_path))
    await runtime.start("ses_lost", tmp_path, history)
    try:
        seen = len(mock_api.conversation_requests())
        assert (await run(runtime, "did it deploy?", "trn_1"))[-1] == TurnCompleted()
    finally:
        await runtime.close()
    sent = json.dumps(mock_api.conversation_requests()[seen]["messages"])
    assert sent.index("RUN: make deploy") < sent.index("turn_aborted") < sent.index("did it deploy?")


async def test_an_interrupt_while_a_request_waits_ends_the_turn_and_the_answer_has_nowhere_to_go(
    claude: ClaudeRuntime,
) -> None:
    events: list = []
    asked = asyncio.Event()

    async def consume() -> None:
        async for event in claude.run_turn("trn_1", "RUN: touch never.txt"):
            events.append(event)
            if isinstance(event, RequestOpened):
                asked.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(asked.wait(), 30)
    await claude.interrupt("stop waiting")
    await asyncio.wait_for(task, 15)
    assert events[-1] == TurnInterrupted("stop waiting")
    [request] = of_type(events, RequestOpened)
    assert not await claude.respond(request.request_id, {"decision": "accept"})
    assert claude.workspace is not None and not (claude.workspace / "never.txt").exists()
    assert (await run(claude, "and now?", "trn_2"))[-1] == TurnCompleted()
