"""The Claude Code runtime's rules without a process: Claude's session id for a Tether session,
the command line and environment, the stream-json messages as runtime events, permission answers,
and the history written back as Claude's transcript."""

from __future__ import annotations

import json
import pathlib
import uuid
from typing import Any

import pytest

from tether.execution_worker._claude_approvals import Approvals, permission_response
from tether.execution_worker._claude_events import ClaudeTurn, Usage, message_events
from tether.execution_worker._claude_settings import QUIET_ENV, ClaudeSettings, claude_session_id
from tether.execution_worker._claude_transcript import (
    TranscriptError,
    history_item,
    history_to_message,
    project_dir,
    write_transcript,
)
from tether.execution_worker.runtime import (
    AgentError,
    DeltaKind,
    HistoryItem,
    HistoryRole,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    RawEvent,
    RequestKind,
    TokenUsage,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)


def test_a_tether_session_id_is_claudes_session_id_bit_for_bit() -> None:
    # "ses_" and a ULID: the same 128 bits, written as a UUID, the same on every worker.
    assert claude_session_id("ses_00000000000000000000000001") == "00000000-0000-0000-0000-000000000001"
    assert claude_session_id("ses_7ZZZZZZZZZZZZZZZZZZZZZZZZZ") == "ffffffff-ffff-ffff-ffff-ffffffffffff"
    real = claude_session_id("ses_01M953T5R2PXZGC033JX6C27D8")
    assert str(uuid.UUID(real)) == real and real != claude_session_id("ses_01M953T5R2PXZGC033JX6C27D9")
    # A UUID is kept; any other id maps to a stable UUID.
    given = str(uuid.uuid4())
    assert claude_session_id(given) == given
    assert claude_session_id("ses_test") == claude_session_id("ses_test") != claude_session_id("ses_other")
    uuid.UUID(claude_session_id("ses_test"))


def test_the_command_line_and_environment(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLAUDE_CODE_MAX_RETRIES", raising=False)
    settings = ClaudeSettings(
        bin="bin/claude",
        model="sonnet",
        permission_mode="acceptEdits",
        allowed_tools=("Bash(git *)", "Edit"),
        args=("--effort", "low"),
        max_retries=2,
    )
    assert settings.bin == str(pathlib.Path.cwd() / "bin/claude")  # claude runs elsewhere
    args = settings.command("sid", resume=False)
    assert args[:10] == [
        settings.bin,
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--permission-prompt-tool",
        "stdio",
    ]
    assert args[10:] == [
        "--session-id",
        "sid",
        "--model",
        "sonnet",
        "--permission-mode",
        "acceptEdits",
        "--allowed-tools",
        "Bash(git *)",
        "Edit",
        "--effort",
        "low",
    ]
    assert settings.command("sid", resume=True)[10:12] == ["--resume", "sid"]
    env = settings.environment(tmp_path)
    assert env["CLAUDE_CONFIG_DIR"] == str(tmp_path) and env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert all(env[key] == "1" for key in QUIET_ENV)
    assert "CLAUDE_CODE_MAX_RETRIES" not in ClaudeSettings().environment(tmp_path)  # Claude's own
    with pytest.raises(ValueError, match="permission mode"):
        ClaudeSettings(permission_mode="default")


def stream(turn: ClaudeTurn, message_id: str, *events: dict) -> list:
    out = []
    for event in ({"type": "message_start", "message": {"id": message_id}}, *events):
        out += list(message_events(turn, {"type": "stream_event", "event": event}, Usage()))
    return out


def test_text_streams_as_one_item_with_deltas_then_completes() -> None:
    turn = ClaudeTurn("trn_1")
    events = stream(
        turn,
        "msg_1",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    )
    body = {"id": "msg_1", "role": "assistant", "content": [{"type": "text", "text": "Hello"}]}
    events += list(message_events(turn, {"type": "assistant", "message": body}, Usage()))
    assert events == [
        ItemStarted(events[0].item),
        ItemDelta("msg_1/0", DeltaKind.AGENT_MESSAGE, "Hel"),
        ItemDelta("msg_1/0", DeltaKind.AGENT_MESSAGE, "lo"),
        ItemCompleted(events[-1].item),
    ]
    assert events[0].item.item_id == events[-1].item.item_id == "msg_1/0"
    assert events[-1].item.kind is ItemKind.AGENT_MESSAGE and events[-1].item.text == "Hello"
    assert [(h.role, h.text) for h in turn.history] == [(HistoryRole.OUTPUT, "Hello")]
    assert json.loads(turn.history[0].raw_json) == body


def test_a_bash_tool_use_is_a_command_and_its_result_completes_it() -> None:
    turn = ClaudeTurn("trn_1", cwd="/w")
    use = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "false"}}
    [started] = message_events(
        turn, {"type": "assistant", "message": {"id": "m", "role": "assistant", "content": [use]}}, Usage()
    )
    assert isinstance(started, ItemStarted) and started.item.kind is ItemKind.COMMAND_EXECUTION
    assert started.item.command == "false" and started.item.cwd == "/w"
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Exit code 1", "is_error": True}
    [done] = message_events(turn, {"type": "user", "message": {"role": "user", "content": [result]}}, Usage())
    assert isinstance(done, ItemCompleted) and done.item.item_id == "toolu_1"
    assert done.item.status == "failed" and done.item.exit_code == 1 and done.item.aggregated_output == "Exit code 1"
    assert [h.role for h in turn.history] == [HistoryRole.TOOL_CALL, HistoryRole.TOOL_OUTPUT]


def test_editing_tools_are_file_changes_and_others_tool_calls() -> None:
    turn = ClaudeTurn("trn_1")
    edit = {
        "type": "tool_use",
        "id": "t1",
        "name": "Edit",
        "input": {"file_path": "a.py", "old_string": "x", "new_string": "y"},
    }
    other = {"type": "tool_use", "id": "t2", "name": "WebFetch", "input": {"url": "u"}}
    message = {"type": "assistant", "message": {"id": "m", "content": [edit, other]}}
    events: list[Any] = list(message_events(turn, message, Usage()))
    assert events[0].item.kind is ItemKind.FILE_CHANGE and events[0].item.changes[0].path == "a.py"
    assert events[0].item.changes[0].diff == "-x\n+y\n"
    assert events[1].item.kind is ItemKind.TOOL_CALL and events[1].item.text == 'WebFetch({"url": "u"})'


def test_errors_retries_results_and_what_is_left_out() -> None:
    turn = ClaudeTurn("trn_1")
    api_error = {
        "type": "assistant",
        "is_api_error_message": True,
        "error": "server_error",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "API Error: 500 boom"}]},
    }
    assert list(message_events(turn, api_error, Usage())) == [AgentError("API Error: 500 boom", False, "server_error")]
    assert turn.history == []  # never the model's words
    retry = {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 3, "error_status": 529, "error": {}}
    [retrying] = message_events(turn, retry, Usage())
    assert isinstance(retrying, AgentError) and retrying.will_retry and "529" in retrying.message
    assert list(message_events(turn, {"type": "system", "subtype": "init"}, Usage())) == []
    [raw] = message_events(turn, {"type": "rate_limit_event", "x": 1}, Usage())
    assert isinstance(raw, RawEvent) and raw.name == "rate_limit_event"
    # A subagent's own messages stay out.
    sub = {
        "type": "assistant",
        "parent_tool_use_id": "toolu_9",
        "message": {"id": "s", "content": [{"type": "text", "text": "x"}]},
    }
    assert list(message_events(turn, sub, Usage())) == []
    usage = Usage()
    result = {"type": "result", "is_error": True, "result": "API Error: 500 boom", "terminal_reason": "api_error"}
    result["usage"] = {"input_tokens": 3, "cache_read_input_tokens": 2, "output_tokens": 4}
    tokens, end = message_events(turn, result, usage)
    assert tokens == TokenUsage(5, 4, 5, 2, 4, 0, 9, 0)
    assert end == TurnFailed("API Error: 500 boom (api_error)")
    assert list(message_events(turn, {"type": "result", "is_error": False}, usage))[-1] == TurnCompleted()
    turn.interrupt_reason = "stop"
    assert list(message_events(turn, {"type": "result", "is_error": True}, usage))[-1] == TurnInterrupted("stop")


def test_permission_prompts_and_answers() -> None:
    turn = ClaudeTurn("trn_1")
    approvals = Approvals()
    prompt = {
        "subtype": "can_use_tool",
        "tool_name": "Write",
        "input": {"file_path": "/w/a.txt", "content": "hi"},
        "tool_use_id": "toolu_1",
        "permission_suggestions": [
            {"type": "addRules", "rules": [{"toolName": "Write"}], "behavior": "allow", "destination": "localSettings"},
            {"type": "setMode", "mode": "acceptEdits", "destination": "session"},
        ],
    }
    opened = approvals.open(turn, "claude-req-1", prompt)
    assert opened.kind is RequestKind.FILE_CHANGE_APPROVAL and opened.summary == "Write /w/a.txt"
    assert opened.item_id == "toolu_1" and opened.available_decisions == (
        "accept",
        "acceptForSession",
        "decline",
        "cancel",
    )
    assert approvals.take(opened.request_id) == ("claude-req-1", turn, prompt)
    assert approvals.take(opened.request_id) is None  # once
    assert permission_response({"decision": "accept"}, prompt) == {"behavior": "allow", "updatedInput": prompt["input"]}
    session = permission_response({"decision": "acceptForSession"}, prompt)
    assert session is not None and session["updatedPermissions"] == [
        {"type": "addRules", "rules": [{"toolName": "Write"}], "behavior": "allow", "destination": "session"}
    ]
    assert permission_response({"decision": "decline"}, prompt) == {
        "behavior": "deny",
        "message": "The user declined this tool use.",
    }
    cancel = permission_response({"decision": "cancel"}, prompt)
    assert cancel is not None and cancel["behavior"] == "deny" and cancel["interrupt"] is True
    assert permission_response({"decision": "maybe"}, prompt) is None
    again = approvals.open(turn, "claude-req-2", prompt)
    approvals.end_turn(turn)
    assert approvals.take(again.request_id) is None and len(approvals) == 0


def test_history_is_written_as_a_chained_transcript(tmp_path: pathlib.Path) -> None:
    cwd = pathlib.Path("/work/sessions/ses_1.x/workspace")
    assert project_dir(tmp_path, cwd) == tmp_path / "projects" / "-work-sessions-ses-1-x-workspace"
    use = {"id": "m1", "role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {}}]}
    history = [
        history_item({"role": "user", "content": [{"type": "text", "text": "hi"}]}, "trn_1"),
        history_item(use, "trn_1"),
        HistoryItem(HistoryRole.OUTPUT, "from elsewhere", "trn_2"),  # no raw JSON: rendered
        HistoryItem(HistoryRole.INPUT, "<turn_aborted>...</turn_aborted>", "trn_3"),
    ]
    path = tmp_path / "t.jsonl"
    assert write_transcript(path, session_uuid="u", cwd=cwd, version="2.1.332", model="m", history=history) == 4
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["type"] for e in entries] == ["user", "assistant", "assistant", "user"]
    assert entries[0]["parentUuid"] is None
    assert all(b["parentUuid"] == a["uuid"] for a, b in zip(entries, entries[1:], strict=False))
    assert all(e["sessionId"] == "u" and e["cwd"] == str(cwd) and not e["isSidechain"] for e in entries)
    assert entries[1]["message"]["content"] == use["content"] and entries[1]["message"]["id"] == "m1"
    assert entries[2]["message"]["content"] == [{"type": "text", "text": "from elsewhere"}]
    assert history_to_message(HistoryItem(HistoryRole.TOOL_OUTPUT, "out"))["role"] == "user"
    with pytest.raises(TranscriptError, match="history item 1 \\(turn trn_9\\)"):
        bad = [history[0], HistoryItem(HistoryRole.OUTPUT, "x", "trn_9", raw_json="{")]
        write_transcript(path, session_uuid="u", cwd=cwd, version="", model="", history=bad)
