"""Mapping an ACP turn's `session/update` notifications to runtime events.

`AcpTurn` is what the runtime knows about the running turn; `update_events()` turns one update
into the events it means:

- `agent_message_chunk` / `agent_thought_chunk`: an agent message / reasoning item, started at
  its first chunk, each chunk a delta, completed when something else comes or the turn ends;
- `tool_call` / `tool_call_update`: a command execution (kind `execute`), a file change (`edit`,
  `delete`, `move`, with the diffs the agent shows) or another tool call, completed when its
  status is `completed` or `failed`, with the text (or terminal) output it reports;
- `usage_update`: token usage (the context used and its size);
- `plan` and anything else: a raw event with the update's JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tether.execution_worker.runtime import (
    DeltaKind,
    FileChange,
    Item,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    RawEvent,
    RuntimeEvent,
    TokenUsage,
)

_TEXT_ITEMS = {
    "agent_message_chunk": (ItemKind.AGENT_MESSAGE, DeltaKind.AGENT_MESSAGE, "msg"),
    "agent_thought_chunk": (ItemKind.REASONING, DeltaKind.REASONING, "rsn"),
}
_FILE_KINDS = frozenset({"edit", "delete", "move"})
_DONE = frozenset({"completed", "failed"})


@dataclass
class _TextItem:
    item_id: str
    kind: ItemKind
    update: str
    parts: list[str] = field(default_factory=list)


@dataclass
class _ToolCall:
    item: Item
    output: str = ""


@dataclass
class AcpTurn:
    """The running turn: its queue (updates, then the prompt's answer) and what it has seen."""

    turn_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    interrupt_reason: str | None = None
    interrupt_deadline: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    request_ids: set[str] = field(default_factory=set)
    text: _TextItem | None = None
    tool_calls: dict[str, _ToolCall] = field(default_factory=dict)
    agent_messages: list[str] = field(default_factory=list)
    _counter: int = 0

    def next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self.turn_id}_{self._counter}"


def update_events(
    turn: AcpTurn, update: dict[str, Any], terminal_output: Callable[[str], str | None]
) -> Iterator[RuntimeEvent]:
    """The runtime events of one `session/update`'s `update`."""
    kind = str(update.get("sessionUpdate", ""))
    if kind in _TEXT_ITEMS:
        yield from _text_chunk(turn, kind, update)
        return
    yield from finish_text(turn)
    if kind in ("tool_call", "tool_call_update"):
        yield from _tool_call(turn, update, terminal_output)
    elif kind == "usage_update":
        used, size = update.get("used"), update.get("size")
        yield TokenUsage(
            total_tokens=used if isinstance(used, int) else 0,
            model_context_window=size if isinstance(size, int) else 0,
        )
    elif kind not in ("available_commands_update", "user_message_chunk"):
        yield RawEvent(f"acp/{kind or 'unknown'}", json.dumps(update))


def finish_text(turn: AcpTurn) -> Iterator[RuntimeEvent]:
    """Complete the message or reasoning being streamed, if any."""
    text, turn.text = turn.text, None
    if text is None:
        return
    body = "".join(text.parts)
    if text.kind is ItemKind.AGENT_MESSAGE:
        turn.agent_messages.append(body)
    yield ItemCompleted(Item(text.item_id, text.kind, text=body, status="completed"))


def finish_tool_calls(turn: AcpTurn) -> Iterator[RuntimeEvent]:
    """Complete whatever tool call the agent left open when its turn ended."""
    for call in turn.tool_calls.values():
        yield ItemCompleted(_with(call.item, status="incomplete", aggregated_output=call.output))
    turn.tool_calls.clear()


def _text_chunk(turn: AcpTurn, kind: str, update: dict[str, Any]) -> Iterator[RuntimeEvent]:
    content = update.get("content")
    piece = content.get("text") if isinstance(content, dict) else None
    if not isinstance(piece, str):
        yield RawEvent(f"acp/{kind}", json.dumps(update))
        return
    item_kind, delta_kind, prefix = _TEXT_ITEMS[kind]
    if turn.text is not None and turn.text.update != kind:
        yield from finish_text(turn)
    if turn.text is None:
        turn.text = _TextItem(turn.next_id(prefix), item_kind, kind)
        yield ItemStarted(Item(turn.text.item_id, item_kind, status="in_progress"))
    turn.text.parts.append(piece)
    yield ItemDelta(turn.text.item_id, delta_kind, piece)


def _tool_call(
    turn: AcpTurn, update: dict[str, Any], terminal_output: Callable[[str], str | None]
) -> Iterator[RuntimeEvent]:
    call_id = str(update.get("toolCallId", ""))
    call = turn.tool_calls.get(call_id)
    status = str(update.get("status") or "")
    if call is None:
        item = _new_item(call_id, update)
        call = turn.tool_calls[call_id] = _ToolCall(item)
        yield ItemStarted(item)
    else:
        changes = _file_changes(update.get("content"))
        call.item = _with(
            call.item,
            text=str(update.get("title") or call.item.text),
            changes=changes or call.item.changes,
            raw_json=json.dumps(update),
        )
    output = _output_of(update, terminal_output)
    if output is not None and output != call.output:
        if output.startswith(call.output):
            delta = output[len(call.output) :]
            if call.item.kind is ItemKind.COMMAND_EXECUTION and delta:
                yield ItemDelta(call.item.item_id, DeltaKind.COMMAND_OUTPUT, delta)
        call.output = output
    if status in _DONE:
        del turn.tool_calls[call_id]
        yield ItemCompleted(
            _with(call.item, status=status, aggregated_output=call.output, exit_code=_exit_code(update, status))
        )


def _new_item(call_id: str, update: dict[str, Any]) -> Item:
    tool_kind = str(update.get("kind") or "other")
    title = str(update.get("title") or "")
    raw_input: dict[str, Any] = update["rawInput"] if isinstance(update.get("rawInput"), dict) else {}
    locations = [loc.get("path") for loc in update.get("locations") or [] if isinstance(loc, dict)]
    cwd = str(raw_input.get("cwd") or "")
    if tool_kind == "execute":
        command = raw_input.get("command")
        if isinstance(command, list):
            command = command[-1] if len(command) == 3 and command[1] in ("-c", "-lc") else " ".join(command)
        return Item(
            call_id,
            ItemKind.COMMAND_EXECUTION,
            text=title,
            command=str(command or title),
            cwd=cwd,
            status="in_progress",
            raw_json=json.dumps(update),
        )
    if tool_kind in _FILE_KINDS:
        changes = _file_changes(update.get("content")) or tuple(
            FileChange(str(path), "delete" if tool_kind == "delete" else "update") for path in locations if path
        )
        return Item(
            call_id,
            ItemKind.FILE_CHANGE,
            text=title,
            status="in_progress",
            changes=changes,
            raw_json=json.dumps(update),
        )
    return Item(call_id, ItemKind.TOOL_CALL, text=title, status="in_progress", raw_json=json.dumps(update))


def _file_changes(content: Any) -> tuple[FileChange, ...]:
    changes = []
    for entry in content or []:
        if not isinstance(entry, dict) or entry.get("type") != "diff" or not entry.get("path"):
            continue
        old, new = entry.get("oldText"), str(entry.get("newText") or "")
        path = str(entry["path"])
        diff = "".join(
            difflib.unified_diff(
                (old or "").splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
            )
        )
        changes.append(FileChange(path, "add" if old is None else "update", diff))
    return tuple(changes)


def _output_of(update: dict[str, Any], terminal_output: Callable[[str], str | None]) -> str | None:
    raw = update.get("rawOutput")
    if isinstance(raw, dict) and isinstance(raw.get("aggregated_output"), str):
        return str(raw["aggregated_output"])
    texts: list[str] = []
    found = False
    for entry in update.get("content") or []:
        if not isinstance(entry, dict):
            continue
        if entry.get("type") == "content" and isinstance(entry.get("content"), dict):
            text = entry["content"].get("text")
            if isinstance(text, str):
                texts.append(text)
                found = True
        elif entry.get("type") == "terminal":
            text = terminal_output(str(entry.get("terminalId")))
            if text is not None:
                texts.append(text)
                found = True
    return "".join(texts) if found else None


def _exit_code(update: dict[str, Any], status: str) -> int | None:
    raw = update.get("rawOutput")
    if isinstance(raw, dict) and isinstance(raw.get("exit_code"), int):
        return int(raw["exit_code"])
    return None if status == "completed" else 1


def _with(item: Item, **changes: Any) -> Item:
    return dataclasses.replace(item, **changes)
