"""The ACP runtime's rules without an agent: how permission options become decisions, how
updates become items, how the agent's state is carried (bounded, fail-closed), and what a
runtime of each portability does with a session that has history."""

from __future__ import annotations

import asyncio
import json
import pathlib

import pytest

from tether.execution_worker._acp import AcpError, AcpRuntime
from tether.execution_worker._acp_check import AcpRuntimeFactory, decide_portability
from tether.execution_worker._acp_events import AcpTurn, finish_text, update_events
from tether.execution_worker._acp_permissions import CANCELLED, Permissions
from tether.execution_worker._acp_settings import AcpSettings, parse_env
from tether.execution_worker._acp_state import StateError, pack_state, unpack_state
from tether.execution_worker.runtime import (
    DeltaKind,
    HistoryItem,
    HistoryRole,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    Portability,
    RequestKind,
    RequestOpened,
    TokenUsage,
    runtime_portability,
)

OPTIONS = [
    {"optionId": "approved", "name": "Yes", "kind": "allow_once"},
    {"optionId": "always", "name": "Always", "kind": "allow_always"},
    {"optionId": "abort", "name": "No", "kind": "reject_once"},
]


async def test_a_permission_request_opens_with_tethers_decisions_and_the_agents_options():
    permissions, turn = Permissions(), AcpTurn("trn_1")
    params = {"sessionId": "s", "toolCall": {"toolCallId": "call_1", "kind": "execute", "title": "rm -rf x"}}
    asking = asyncio.create_task(permissions.ask(turn, {**params, "options": OPTIONS}))
    opened = await asyncio.wait_for(turn.queue.get(), 5)
    assert isinstance(opened, RequestOpened) and opened.kind is RequestKind.COMMAND_APPROVAL
    assert opened.available_decisions == (
        "accept",
        "acceptForSession",
        "decline",
        "cancel",
        "approved",
        "always",
        "abort",
    )
    assert opened.summary == "rm -rf x" and opened.item_id == "call_1"
    assert permissions.answer(opened.request_id, {"decision": "nope"})[0] is False
    assert permissions.answer(opened.request_id, {"decision": "decline"}) == (True, None)
    assert await asking == {"outcome": {"outcome": "selected", "optionId": "abort"}}
    assert permissions.answer(opened.request_id, {"decision": "accept"}) == (False, None)  # answered once


async def test_an_unanswered_permission_is_cancelled_when_its_turn_ends():
    permissions, turn = Permissions(), AcpTurn("trn_1")
    edit = {"toolCall": {"toolCallId": "c", "kind": "edit", "title": "edit a.py"}, "options": OPTIONS}
    asking = asyncio.create_task(permissions.ask(turn, edit))
    opened = await asyncio.wait_for(turn.queue.get(), 5)
    assert opened.kind is RequestKind.FILE_CHANGE_APPROVAL
    permissions.end_turn(turn)
    assert await asking == CANCELLED and len(permissions) == 0
    assert await permissions.ask(None, edit) == CANCELLED  # no turn runs


def test_updates_become_streamed_messages_tool_items_and_usage():
    turn = AcpTurn("trn_1")
    updates = [
        {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": "thinking"}},
        {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Hel"}},
        {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "lo"}},
        {"sessionUpdate": "tool_call", "toolCallId": "c1", "kind": "execute", "title": "ls", "status": "pending"},
        {
            "sessionUpdate": "tool_call_update",
            "toolCallId": "c1",
            "status": "completed",
            "content": [{"type": "content", "content": {"type": "text", "text": "a.txt\n"}}],
        },
        {
            "sessionUpdate": "tool_call",
            "toolCallId": "c2",
            "kind": "edit",
            "title": "edit",
            "status": "completed",
            "content": [{"type": "diff", "path": "/w/a.txt", "oldText": "x\n", "newText": "y\n"}],
        },
        {"sessionUpdate": "usage_update", "used": 42, "size": 1000},
    ]
    events = [e for u in updates for e in update_events(turn, u, lambda _: None)]
    events += list(finish_text(turn))
    completed = [e.item for e in events if isinstance(e, ItemCompleted)]
    assert [(i.kind, i.text) for i in completed[:2]] == [
        (ItemKind.REASONING, "thinking"),
        (ItemKind.AGENT_MESSAGE, "Hello"),
    ]
    command = completed[2]
    assert command.kind is ItemKind.COMMAND_EXECUTION and command.command == "ls"
    assert command.aggregated_output == "a.txt\n" and command.status == "completed"
    change = completed[3]
    assert change.kind is ItemKind.FILE_CHANGE and change.changes[0].path == "/w/a.txt"
    assert "-x\n+y\n" in change.changes[0].diff
    deltas = [(e.kind, e.delta) for e in events if isinstance(e, ItemDelta)]
    assert (DeltaKind.AGENT_MESSAGE, "lo") in deltas and (DeltaKind.COMMAND_OUTPUT, "a.txt\n") in deltas
    assert sum(isinstance(e, ItemStarted) for e in events) == 4
    assert [e for e in events if isinstance(e, TokenUsage)] == [TokenUsage(total_tokens=42, model_context_window=1000)]
    assert turn.agent_messages == ["Hello"]


def _settings(tmp: pathlib.Path, **values) -> AcpSettings:
    return AcpSettings(command=("agent",), state_dir_env="AGENT_HOME", **values)


def test_state_round_trips_without_the_excluded_files(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    (source / "sessions").mkdir(parents=True)
    (source / "sessions" / "one.jsonl").write_text('{"turn": 1}\n')
    (source / "cache.sqlite").write_bytes(b"\0" * 100)
    (source / "outside").symlink_to(tmp_path)  # links are not followed
    settings = _settings(tmp_path, state_exclude=("*.sqlite",))
    packed = json.loads(json.dumps(pack_state(settings, source)))
    assert sorted(packed["files"]) == ["sessions/one.jsonl"]
    assert unpack_state(settings, packed, target) == 1
    assert (target / "sessions" / "one.jsonl").read_text() == '{"turn": 1}\n'


def test_state_over_the_bound_or_tampered_fails_closed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big").write_bytes(b"x" * 2000)
    small = _settings(tmp_path, max_state_bytes=1000)
    packed = pack_state(small, tmp_path / "a")
    assert "error" in packed and "--acp-state-max-mib" in packed["error"]
    with pytest.raises(StateError, match="not carried"):
        unpack_state(small, packed, tmp_path / "b")
    good = pack_state(_settings(tmp_path), tmp_path / "a")
    with pytest.raises(StateError, match="checksum"):
        unpack_state(_settings(tmp_path), {**good, "sha256": "0" * 64}, tmp_path / "b")
    escaping = {**good, "files": {"../evil": good["files"]["big"]}}
    with pytest.raises(StateError, match="bad file"):
        unpack_state(_settings(tmp_path), escaping, tmp_path / "b")
    assert not (tmp_path / "evil").exists()


def test_portability_is_decided_from_load_session_and_the_carried_state_directory():
    carried = AcpSettings(command=("a",), state_dir_env="AGENT_HOME")
    assert decide_portability(carried, {"loadSession": True})[0] is Portability.STATE
    assert decide_portability(carried, {})[0] is Portability.NONE
    reason = decide_portability(AcpSettings(command=("a",)), {"loadSession": True})
    assert reason[0] is Portability.NONE and "--acp-state-dir-env" in reason[1]
    factory = AcpRuntimeFactory(carried)
    assert runtime_portability(factory) is Portability.NONE  # until probed
    factory.portability = Portability.STATE
    assert runtime_portability(factory) is Portability.STATE and factory().portability is Portability.STATE


HISTORY = [HistoryItem(HistoryRole.INPUT, "earlier", "trn_0")]


async def test_a_none_runtime_refuses_to_start_a_session_with_history(tmp_path):
    runtime = AcpRuntime(AcpSettings(command=("agent",)), Portability.NONE, "the agent does not offer session/load")
    with pytest.raises(AcpError, match="does not offer session/load.*portability none"):
        await runtime.start("ses_1", tmp_path, HISTORY)
    with pytest.raises(AcpError, match="cannot move"):
        runtime.restore_state({"acp_session_id": "x"})


async def test_a_state_runtime_refuses_history_without_carried_state(tmp_path):
    runtime = AcpRuntime(_settings(tmp_path), Portability.STATE, "carried")
    runtime.restore_state({})  # no snapshot
    with pytest.raises(AcpError, match="no snapshot with the agent's state"):
        await runtime.start("ses_1", tmp_path, HISTORY)
    over = AcpRuntime(_settings(tmp_path), Portability.STATE, "carried")
    with pytest.raises(AcpError, match="not carried"):
        over.restore_state({"acp_session_id": "x", "state": {"error": "over the bound"}})


def test_settings_refuse_bad_names_and_parse_env():
    assert parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(ValueError):
        parse_env(["nope"])
    with pytest.raises(ValueError):
        AcpSettings(command=("a",), state_dir_env="BAD NAME")
    with pytest.raises(ValueError):
        AcpSettings(command=("a",), env={"HOME_X": "1"}, state_dir_env="HOME_X")
    assert AcpSettings.from_command_line("agent --flag 'a b'").command == ("agent", "--flag", "a b")
