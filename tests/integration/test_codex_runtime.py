"""The Codex runtime on its own, against the real `codex app-server` and a mock Responses API on
127.0.0.1: streaming, commands, approvals, interrupts, failures, history and rehydration.
Its settings, paths and home are in test_codex_setup.py; what only a stand-in app-server can be
made to do, in test_codex_fake_app_server.py."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
from typing import Any

import pytest

from tests.helpers.codex_mock import MockResponses
from tests.helpers.codex_runtime import (
    CODEX,
    TERMINAL,
    accept,
    completed_items,
    decline,
    history_of,
    needs_codex,
    of_type,
    run,
    settings_for,
)
from tether.execution_worker._codex import CodexError, CodexRuntime, CodexSettings
from tether.execution_worker.runtime import (
    AgentError,
    DeltaKind,
    HistoryAppended,
    HistoryItem,
    HistoryRole,
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


@needs_codex
async def test_plain_turn_streams_and_records_history(
    codex: CodexRuntime, mock_api: MockResponses, tmp_path: pathlib.Path
) -> None:
    events = await run(codex, "hi there")
    reply = "Hello from mock. You said: hi there"
    assert events[-1] == TurnCompleted()
    deltas = [e for e in of_type(events, ItemDelta) if e.kind is DeltaKind.AGENT_MESSAGE]
    assert len(deltas) > 1 and "".join(d.delta for d in deltas) == reply
    [message] = completed_items(events, ItemKind.AGENT_MESSAGE)
    assert message.text == reply and json.loads(message.raw_json)["type"] == "agentMessage"
    assert {d.item_id for d in deltas} == {message.item_id}
    assert [i.text for i in completed_items(events, ItemKind.USER_MESSAGE)] == ["hi there"]
    assert any(e.item.kind is ItemKind.AGENT_MESSAGE for e in of_type(events, ItemStarted))
    usage = of_type(events, TokenUsage)[-1]
    assert usage.total_tokens > 0 and usage.total_input_tokens > 0

    # The model-visible items, recorded before the terminal event and nothing Codex makes itself.
    history = history_of(events)
    assert [(h.role, h.text, h.turn_id) for h in history] == [
        (HistoryRole.INPUT, "hi there", "trn_1"),
        (HistoryRole.OUTPUT, reply, "trn_1"),
    ]
    assert events.index(of_type(events, HistoryAppended)[-1]) < len(events) - 1
    for item in history:
        raw = json.loads(item.raw_json)
        assert raw["type"] == "message" and "internal_chat_message_metadata_passthrough" not in raw
    assert codex.export_history() == history

    workspace = tmp_path / "sessions" / "ses_test" / "workspace"
    assert codex.workspace == workspace and workspace.is_dir()
    assert codex.codex_home == tmp_path / "sessions" / "ses_test" / "codex-home"
    assert f"<cwd>{workspace}</cwd>" in json.dumps(mock_api.requests[-1]["input"])
    metadata = codex.runtime_metadata()
    assert metadata["runtime"] == "codex" and metadata["model"] == "mock-model"
    assert metadata["runtime_thread_id"] == codex.runtime_thread_id != ""
    assert metadata["codex_version"].count(".") == 2
    json.dumps(metadata)

    # A second turn on the same thread: the history only grows by the new turn's items.
    events = await run(codex, "and again", "trn_2")
    assert [h.text for h in history_of(events)] == ["and again", "Hello from mock. You said: and again"]
    assert len(codex.export_history()) == 4


@needs_codex
async def test_command_execution_and_its_history(codex: CodexRuntime) -> None:
    events = await run(codex, "RUN: echo hi-from-codex")
    assert events[-1] == TurnCompleted()
    [command] = completed_items(events, ItemKind.COMMAND_EXECUTION)
    assert "echo hi-from-codex" in command.command
    assert command.status == "completed" and command.exit_code == 0
    assert "hi-from-codex" in command.aggregated_output
    assert command.cwd == str(codex.workspace)
    roles = [h.role for h in history_of(events)]
    assert roles == [HistoryRole.INPUT, HistoryRole.TOOL_CALL, HistoryRole.TOOL_OUTPUT, HistoryRole.OUTPUT]
    call, output = (json.loads(h.raw_json) for h in history_of(events)[1:3])
    assert call["type"] == "function_call" and call["name"] == "exec_command"
    assert output["type"] == "function_call_output" and output["call_id"] == call["call_id"]
    assert "hi-from-codex" in history_of(events)[2].text


@needs_codex
async def test_command_approval_accepted_then_declined(codex: CodexRuntime) -> None:
    events = await run(codex, "RUN_ESCALATED: echo ran-with-approval", answer=accept)
    [request] = of_type(events, RequestOpened)
    assert request.kind is RequestKind.COMMAND_APPROVAL
    assert request.method == "item/commandExecution/requestApproval"
    assert "echo ran-with-approval" in request.summary and "the mock wants" in request.summary
    # Codex's own list (a decision with data as its JSON), then the names Codex takes but leaves out.
    amendment = {"acceptWithExecpolicyAmendment": {"execpolicy_amendment": ["echo", "ran-with-approval"]}}
    assert request.available_decisions == ("accept", json.dumps(amendment), "cancel", "acceptForSession", "decline")
    assert json.loads(request.params_json)["itemId"] == request.item_id != ""
    [command] = completed_items(events, ItemKind.COMMAND_EXECUTION)
    assert command.item_id == request.item_id
    assert command.status == "completed" and "ran-with-approval" in command.aggregated_output
    assert events[-1] == TurnCompleted()
    # The turn is over: its request can no longer be answered.
    assert not await codex.respond(request.request_id, {"decision": "accept"})

    events = await run(codex, "RUN_ESCALATED: echo must-not-run", "trn_2", answer=decline)
    [request] = of_type(events, RequestOpened)
    [command] = completed_items(events, ItemKind.COMMAND_EXECUTION)
    assert command.status == "declined" and "must-not-run" not in command.aggregated_output
    assert events[-1] == TurnCompleted()


@needs_codex
async def test_file_change_approval_in_a_read_only_sandbox(mock_api: MockResponses, tmp_path: pathlib.Path) -> None:
    runtime = CodexRuntime(settings_for(mock_api, tmp_path, sandbox="read-only"))
    try:
        await runtime.start("ses_patch", tmp_path, [])
        events = await run(runtime, "PATCH: new.txt", answer=accept)
        [request] = of_type(events, RequestOpened)
        assert request.kind is RequestKind.FILE_CHANGE_APPROVAL
        assert request.method == "item/fileChange/requestApproval"
        assert "new.txt" in request.summary
        assert runtime.workspace is not None
        assert (runtime.workspace / "new.txt").read_text() == "patched by the mock\n"
        [change_item] = completed_items(events, ItemKind.FILE_CHANGE)
        assert change_item.status == "completed"
        [change] = change_item.changes
        assert change.path.endswith("new.txt") and change.kind == "add" and "patched by the mock" in change.diff
        assert events[-1] == TurnCompleted()
    finally:
        await runtime.close()


@needs_codex
async def test_interrupt_ends_a_slow_turn(codex: CodexRuntime) -> None:
    await asyncio.wait_for(codex.interrupt("nothing runs"), timeout=1)  # idle: a no-op
    events = []
    turn = codex.run_turn("trn_1", "SLOW")
    async with asyncio.timeout(20):
        async for event in turn:
            events.append(event)
            if isinstance(event, ItemDelta):
                break
        interrupt = asyncio.create_task(codex.interrupt("stop please"))
        events += [e async for e in turn]
        await interrupt
        await codex.interrupt("again")  # idempotent once the turn is over
    assert events[-1] == TurnInterrupted("stop please")
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
    assert history_of(events)[0].text == "SLOW"
    # The thread goes on.
    assert (await run(codex, "still there?", "trn_2"))[-1] == TurnCompleted()


@needs_codex
async def test_model_error_fails_the_turn_readably(codex: CodexRuntime) -> None:
    events = await run(codex, "FAIL500")
    [error] = of_type(events, AgentError)
    assert error.code == "internalServerError" and not error.will_retry and error.message
    assert isinstance(events[-1], TurnFailed)
    assert error.message in events[-1].error_message and "{" not in events[-1].error_message
    assert (await run(codex, "recovered?", "trn_2"))[-1] == TurnCompleted()


@needs_codex
async def test_app_server_dying_mid_turn_fails_the_turn(codex: CodexRuntime) -> None:
    pid = codex.pid
    assert pid is not None
    events = []
    async with asyncio.timeout(20):
        turn = codex.run_turn("trn_1", "SLOW")
        async for event in turn:
            events.append(event)
            if isinstance(event, ItemDelta):
                os.kill(pid, signal.SIGKILL)
    assert isinstance(events[-1], TurnFailed)
    assert events[-1].error_message.startswith("codex app-server exited (code -9)")
    assert isinstance((await run(codex, "anyone?", "trn_2"))[-1], TurnFailed)


@needs_codex
async def test_close_mid_turn_ends_the_turn(codex: CodexRuntime) -> None:
    events = []
    async with asyncio.timeout(20):
        async for event in codex.run_turn("trn_1", "SLOW"):
            events.append(event)
            if isinstance(event, ItemDelta) and codex.pid is not None:
                await codex.close()
                await codex.close()  # idempotent
    assert events[-1] == TurnInterrupted("runtime closed")
    assert codex.pid is None


@needs_codex
async def test_rehydration_hands_the_history_to_a_new_thread(mock_api: MockResponses, tmp_path: pathlib.Path) -> None:
    first = CodexRuntime(settings_for(mock_api, tmp_path))
    try:
        await first.start("ses_a", tmp_path / "a", [])
        await run(first, "REMEMBER: my favourite colour is teal", "trn_1")
        await run(first, "RUN: echo prior-output", "trn_2")
        history = first.export_history()
        first_thread = first.runtime_thread_id
    finally:
        await first.close()
    # Items another runtime recorded carry no raw JSON; they reach Codex as plain messages.
    shell_era = [
        HistoryItem(HistoryRole.INPUT, "SHELL-ERA input", "trn_0"),
        HistoryItem(HistoryRole.OUTPUT, "SHELL-ERA output", "trn_0"),
    ]
    second = CodexRuntime(settings_for(mock_api, tmp_path))
    try:
        await second.start("ses_a", tmp_path / "b", shell_era + history)
        assert second.runtime_thread_id not in ("", first_thread)
        assert second.export_history() == shell_era + history
        events = await run(second, "what was my colour?", "trn_3")
        assert events[-1] == TurnCompleted()
        sent = mock_api.requests[-1]["input"]
        texts = json.dumps(sent)
        for expected in ("SHELL-ERA input", "SHELL-ERA output", "my favourite colour is teal", "prior-output"):
            assert expected in texts
        calls = [i for i in sent if i.get("type") == "function_call"]
        outputs = [i for i in sent if i.get("type") == "function_call_output"]
        assert [c["call_id"] for c in calls] == [o["call_id"] for o in outputs] != []
        assert "echo prior-output" in calls[0]["arguments"]
        # Codex's own context is not duplicated by the rehydrated history.
        contexts = [i for i in sent if "<environment_context>" in json.dumps(i)]
        assert len(contexts) == 1
        assert sent[-1]["content"][0]["text"] == "what was my colour?"
        # Only the new turn's items are added; the rehydrated ones are not read back.
        assert [h.text for h in history_of(events)] == [
            "what was my colour?",
            "Hello from mock. You said: what was my colour?",
        ]
        assert second.export_history() == shell_era + history + history_of(events)
    finally:
        await second.close()


@needs_codex
async def test_rehydration_fails_closed(mock_api: MockResponses, tmp_path: pathlib.Path) -> None:
    history = [HistoryItem(HistoryRole.INPUT, "hello", "trn_1")]

    missing = CodexRuntime(settings_for(mock_api, tmp_path, bin=str(tmp_path / "no-such-codex")))
    with pytest.raises(CodexError, match="could not run"):
        await missing.start("ses_x", tmp_path, history)
    await missing.close()

    # A message without content: Codex rejects the history, and no empty thread is started.
    rejected = CodexRuntime(settings_for(mock_api, tmp_path))
    bad = HistoryItem(HistoryRole.INPUT, "hello", "trn_1", raw_json='{"type": "message", "role": "user"}')
    with pytest.raises(CodexError, match="rehydrating the codex thread failed: thread/resume failed"):
        await rejected.start("ses_y", tmp_path, history + [bad])
    assert rejected.runtime_thread_id == "" and rejected.pid is None
    assert isinstance((await run(rejected, "hi"))[-1], TurnFailed)
    await rejected.close()

    garbled = CodexRuntime(settings_for(mock_api, tmp_path))
    with pytest.raises(CodexError, match="not JSON"):
        await garbled.start("ses_z", tmp_path, [HistoryItem(HistoryRole.OUTPUT, "x", raw_json="{nope")])
    await garbled.close()


@needs_codex
async def test_a_consumer_may_stop_at_the_terminal_event_or_walk_away(codex: CodexRuntime) -> None:
    turn = codex.run_turn("trn_1", "hello")
    async with asyncio.timeout(20):
        async for event in turn:
            if isinstance(event, TERMINAL):
                break  # no further anext(): the runtime must already be free for the next turn
        assert (await run(codex, "next", "trn_2"))[-1] == TurnCompleted()
        # Walking away mid-turn stops Codex's turn; the session goes on.
        turn = codex.run_turn("trn_3", "SLOW")
        async for event in turn:
            if isinstance(event, ItemDelta):
                break
        await turn.aclose()
        events = await run(codex, "after walking away", "trn_4")
    assert events[-1] == TurnCompleted()
    assert [h.turn_id for h in codex.export_history()].count("trn_4") == 2


@needs_codex
async def test_an_answer_codex_would_not_read_is_refused_out_loud(codex: CodexRuntime) -> None:
    """Codex takes an answer it cannot read as a failed approval, silently: the runtime refuses
    it (respond() is False), says why in the turn's events and the worker's log, and the command
    does not run."""

    async def turn(text: str, turn_id: str, answer: dict[str, Any]) -> tuple[list, bool]:
        events, delivered = [], None
        async with asyncio.timeout(30):
            async for event in codex.run_turn(turn_id, text):
                events.append(event)
                if isinstance(event, RequestOpened):
                    delivered = await codex.respond(event.request_id, answer)
        return events, bool(delivered)

    bad = {"decision": {"acceptWithExecpolicyAmendment": {}}}
    events, delivered = await turn("RUN_ESCALATED: echo refused-answer", "trn_1", bad)
    assert not delivered and events[-1] == TurnCompleted()
    [request] = of_type(events, RequestOpened)
    [refused] = [e for e in of_type(events, AgentError) if e.code == "answerRefused"]
    assert request.request_id in refused.message and "acceptWithExecpolicyAmendment" in refused.message
    [command] = completed_items(events, ItemKind.COMMAND_EXECUTION)
    assert command.status != "completed" and "refused-answer" not in command.aggregated_output

    # The amendment Codex proposed, as listed, is taken: the command runs.
    listed = {"decision": json.loads(request.available_decisions[1])}
    events, delivered = await turn("RUN_ESCALATED: echo amended", "trn_2", listed)
    assert delivered and events[-1] == TurnCompleted()
    assert any(c.status == "completed" for c in completed_items(events, ItemKind.COMMAND_EXECUTION))
    # acceptForSession works although Codex does not list it.
    events, delivered = await turn("RUN_ESCALATED: echo for-session", "trn_3", {"decision": "acceptForSession"})
    assert delivered and any(
        c.status == "completed" and "for-session" in c.aggregated_output
        for c in completed_items(events, ItemKind.COMMAND_EXECUTION)
    )


@needs_codex
async def test_a_model_provider_that_stays_unreachable_fails_the_turn_after_bounded_reconnects(
    tmp_path: pathlib.Path,
) -> None:
    """Codex announces "Reconnecting... waiting for network" with a growing backoff and never
    stops by itself; the runtime gives up after `max_reconnects` and fails the turn saying why."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = f'{{name="gone", base_url="http://127.0.0.1:{port}/v1", wire_api="responses"}}'
    settings = CodexSettings(
        bin=CODEX,
        model="mock-model",
        config=('model_provider="gone"', f"model_providers.gone={provider}"),
        home_from=tmp_path / "no-user-home",
        max_reconnects=0,
    )
    runtime = CodexRuntime(settings)
    try:
        await runtime.start("ses_offline", tmp_path, [])
        async with asyncio.timeout(60):  # without the bound: retrying for the 30-minute turn timeout
            events = [e async for e in runtime.run_turn("trn_1", "hello?")]
        retries = [e for e in of_type(events, AgentError) if e.will_retry]
        assert retries and "Reconnecting" in retries[0].message
        assert isinstance(events[-1], TurnFailed), events[-1]
        assert events[-1].error_message.startswith("the model provider stayed unreachable: gave up after 0 reconnects")
        assert "waiting for network" in events[-1].error_message
        # app-server itself goes on: only the turn was given up.
        assert runtime.pid is not None
    finally:
        await runtime.close()
    with pytest.raises(ValueError, match="max_reconnects"):
        CodexSettings(max_reconnects=-1)
