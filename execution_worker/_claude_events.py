"""Mapping a Claude Code turn's stream-json messages to runtime events.

`ClaudeTurn` is what the runtime knows about the running turn; `message_events()` turns one
message into the runtime events it means:

- `stream_event` (the Messages API's own server-sent events, with `--include-partial-messages`):
  a text or thinking block starting is an `ItemStarted`, its deltas are `ItemDelta`s;
- `assistant` (one per content block once it is complete): text is an `AGENT_MESSAGE` item,
  thinking a `REASONING` item, a tool use an item that starts (`Bash` a `COMMAND_EXECUTION`
  with its command, the editing tools a `FILE_CHANGE` naming the file, others a `TOOL_CALL`);
  an API error Claude reports as a message (`is_api_error_message`) is an `AgentError`;
- `user` (tool results): the tool item completes with its output;
- `system` `api_retry`: an `AgentError` that will be retried;
- `result`: token usage, then the terminal event (failed when `is_error`, with Claude's text).

Messages of subagents (`parent_tool_use_id` set) stay out of the session's items and history:
the tool use that started the subagent and its result are what the model sees.

Every `assistant` and `user` message of the main conversation is also kept, verbatim, as a
model-visible `HistoryItem` (`_claude_transcript` writes them back for a resume).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tether.execution_worker._claude_transcript import history_item
from tether.execution_worker.runtime import (
    AgentError,
    DeltaKind,
    FileChange,
    HistoryItem,
    Item,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    RawEvent,
    RuntimeEvent,
    TokenUsage,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)

#: Claude Code's tools that change files, and the input field naming the file.
FILE_TOOLS = {"Edit": "file_path", "MultiEdit": "file_path", "Write": "file_path", "NotebookEdit": "notebook_path"}
# `system` messages with nothing for a session's log (init repeats at every turn).
_DROPPED_SYSTEM = frozenset({"init", "status"})
_EXIT_CODE = re.compile(r"^Exit code (\d+)")


@dataclass
class Usage:
    """The session's running token totals (Claude reports each turn's own)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class ClaudeTurn:
    """The running turn: its queue of messages from claude and what it has seen so far."""

    turn_id: str
    cwd: str = ""
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    interrupt_reason: str | None = None
    interrupt_sent: bool = False
    interrupt_deadline: float | None = None
    result_seen: bool = False  # claude sent the turn's `result`: nothing more of it will come
    last_error: str = ""
    history: list[HistoryItem] = field(default_factory=list)
    # Messages API message id -> (content block index -> item id) of blocks streamed so far.
    streamed: dict[str, dict[int, str]] = field(default_factory=dict)
    current_message: str = ""
    # Blocks of each message id already completed (claude sends one `assistant` per block).
    completed_blocks: dict[str, int] = field(default_factory=dict)
    tools: dict[str, Item] = field(default_factory=dict)  # tool_use id -> its started item
    request_ids: set[str] = field(default_factory=set)  # its pending requests (_claude_approvals)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


def message_events(turn: ClaudeTurn, message: dict[str, Any], usage: Usage) -> Iterator[RuntimeEvent]:
    """The runtime events one message of `turn`'s means (it may update `turn` and `usage`)."""
    kind = message.get("type")
    if message.get("parent_tool_use_id"):
        return  # a subagent's own conversation
    if kind == "stream_event":
        yield from _stream_events(turn, message.get("event") or {})
    elif kind == "assistant":
        yield from _assistant_events(turn, message)
    elif kind == "user":
        yield from _user_events(turn, message)
    elif kind == "system":
        subtype = message.get("subtype")
        if subtype == "api_retry":
            text = f"model API error {message.get('error_status') or ''}: {_error_text(message.get('error'))}"
            text += f"; retry {message.get('attempt')} of {message.get('max_retries')}"
            yield AgentError(text.replace("  ", " "), will_retry=True, code="api_retry")
        elif subtype not in _DROPPED_SYSTEM:
            yield RawEvent(f"system/{subtype}", json.dumps(message))
    elif kind == "result":
        yield from _result_events(turn, message, usage)
    else:
        yield RawEvent(str(kind), json.dumps(message))


def _stream_events(turn: ClaudeTurn, event: dict[str, Any]) -> Iterator[RuntimeEvent]:
    kind = event.get("type")
    if kind == "message_start":
        turn.current_message = str((event.get("message") or {}).get("id", ""))
    elif kind == "content_block_start":
        block = event.get("content_block") or {}
        item_kind = {"text": ItemKind.AGENT_MESSAGE, "thinking": ItemKind.REASONING}.get(str(block.get("type")))
        if item_kind is None:
            return  # a tool use starts as an item once its input is whole
        index = int(event.get("index") or 0)
        item_id = f"{turn.current_message}/{index}"
        turn.streamed.setdefault(turn.current_message, {})[index] = item_id
        yield ItemStarted(Item(item_id, item_kind, status="inProgress"))
    elif kind == "content_block_delta":
        delta = event.get("delta") or {}
        streamed_id = turn.streamed.get(turn.current_message, {}).get(int(event.get("index") or 0))
        if streamed_id is None:
            return
        if delta.get("type") == "text_delta":
            yield ItemDelta(streamed_id, DeltaKind.AGENT_MESSAGE, str(delta.get("text", "")))
        elif delta.get("type") == "thinking_delta":
            yield ItemDelta(streamed_id, DeltaKind.REASONING, str(delta.get("thinking", "")))


def _assistant_events(turn: ClaudeTurn, message: dict[str, Any]) -> Iterator[RuntimeEvent]:
    body = message.get("message") or {}
    if message.get("is_api_error_message") or message.get("error"):
        text = _text_of(body.get("content")) or str(message.get("error"))
        turn.last_error = text
        yield AgentError(text, will_retry=False, code=str(message.get("error") or "api_error"))
        return
    turn.history.append(history_item(body, turn.turn_id))
    message_id = str(body.get("id", ""))
    for block in body.get("content") or []:
        if not isinstance(block, dict):
            continue
        index = turn.completed_blocks.get(message_id, 0)
        turn.completed_blocks[message_id] = index + 1
        kind = block.get("type")
        if kind in ("text", "thinking"):
            item_id = turn.streamed.get(message_id, {}).get(index) or f"{message_id}/{index}"
            item_kind = ItemKind.AGENT_MESSAGE if kind == "text" else ItemKind.REASONING
            text = str(block.get("text") if kind == "text" else block.get("thinking") or "")
            yield ItemCompleted(Item(item_id, item_kind, text=text, status="completed", raw_json=json.dumps(block)))
        elif kind == "tool_use":
            item = tool_item(block, turn.cwd)
            turn.tools[item.item_id] = item
            yield ItemStarted(item)


def _user_events(turn: ClaudeTurn, message: dict[str, Any]) -> Iterator[RuntimeEvent]:
    body = message.get("message") or {}
    turn.history.append(history_item(body, turn.turn_id))
    content = body.get("content")
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict) or block.get("type") != "tool_result":
            continue
        started = turn.tools.pop(str(block.get("tool_use_id", "")), None)
        if started is None:
            continue
        output = _text_of(block.get("content"))
        failed = bool(block.get("is_error"))
        exit_code = None
        if started.kind is ItemKind.COMMAND_EXECUTION:
            match = _EXIT_CODE.match(output)
            exit_code = int(match.group(1)) if match else (None if failed else 0)
        yield ItemCompleted(
            Item(
                item_id=started.item_id,
                kind=started.kind,
                text=started.text,
                command=started.command,
                cwd=started.cwd,
                status="failed" if failed else "completed",
                exit_code=exit_code,
                aggregated_output=output,
                changes=started.changes,
                raw_json=json.dumps({"tool_use": json.loads(started.raw_json), "tool_result": block}),
            )
        )


def _result_events(turn: ClaudeTurn, message: dict[str, Any], usage: Usage) -> Iterator[RuntimeEvent]:
    turn_usage = message.get("usage") or {}
    last_in = int(turn_usage.get("input_tokens") or 0)
    cached = int(turn_usage.get("cache_read_input_tokens") or 0) + int(
        turn_usage.get("cache_creation_input_tokens") or 0
    )
    last_out = int(turn_usage.get("output_tokens") or 0)
    usage.input_tokens += last_in + cached
    usage.cached_input_tokens += cached
    usage.output_tokens += last_out
    yield TokenUsage(
        last_input_tokens=last_in + cached,
        last_output_tokens=last_out,
        total_input_tokens=usage.input_tokens,
        total_cached_input_tokens=usage.cached_input_tokens,
        total_output_tokens=usage.output_tokens,
        total_tokens=usage.input_tokens + usage.output_tokens,
        model_context_window=_context_window(message.get("modelUsage")),
    )
    yield terminal_for(turn, message)


def terminal_for(turn: ClaudeTurn, result: dict[str, Any]) -> RuntimeEvent:
    """The terminal event for a `result` message of `turn`'s."""
    if turn.interrupt_reason is not None:
        return TurnInterrupted(turn.interrupt_reason)
    if not result.get("is_error"):
        return TurnCompleted()
    text = result.get("result")
    if not isinstance(text, str) or not text:
        errors = result.get("errors")
        text = "; ".join(map(str, errors)) if isinstance(errors, list) and errors else turn.last_error
    reason = str(result.get("terminal_reason") or result.get("subtype") or "error")
    return TurnFailed(f"{text or 'claude ended the turn with an error'} ({reason})")


def tool_item(block: dict[str, Any], cwd: str) -> Item:
    """A `tool_use` block as a runtime `Item` (not yet completed), its JSON kept in `raw_json`."""
    name = str(block.get("name", ""))
    tool_input = block.get("input") if isinstance(block.get("input"), dict) else {}
    assert isinstance(tool_input, dict)
    item_id, raw = str(block.get("id", "")), json.dumps(block)
    if name == "Bash":
        command = str(tool_input.get("command", ""))
        return Item(
            item_id, ItemKind.COMMAND_EXECUTION, command, command=command, cwd=cwd, status="inProgress", raw_json=raw
        )
    if name in FILE_TOOLS:
        path = str(tool_input.get(FILE_TOOLS[name], ""))
        change = FileChange(path=path, kind="add" if name == "Write" else "update", diff=_diff(name, tool_input))
        return Item(
            item_id, ItemKind.FILE_CHANGE, f"{name} {path}", changes=(change,), status="inProgress", raw_json=raw
        )
    return Item(item_id, ItemKind.TOOL_CALL, f"{name}({json.dumps(tool_input)})", status="inProgress", raw_json=raw)


def describe_tool(name: str, tool_input: dict[str, Any]) -> str:
    """One line saying what a tool use does, for an approval's summary."""
    if name == "Bash":
        return str(tool_input.get("command", ""))
    if name in FILE_TOOLS:
        return f"{name} {tool_input.get(FILE_TOOLS[name], '')}"
    return f"{name}({json.dumps(tool_input)[:300]})"


def _diff(name: str, tool_input: dict[str, Any]) -> str:
    """What an editing tool changes, as unified-diff-like lines (Claude sends no diff)."""
    if name == "Write":
        return "".join(f"+{line}\n" for line in str(tool_input.get("content", "")).splitlines())
    edits = tool_input.get("edits") if name == "MultiEdit" else [tool_input]
    lines = []
    for edit in edits if isinstance(edits, list) else []:
        if isinstance(edit, dict):
            lines += [f"-{line}\n" for line in str(edit.get("old_string", "")).splitlines()]
            lines += [f"+{line}\n" for line in str(edit.get("new_string", "")).splitlines()]
    return "".join(lines)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error")
        if isinstance(inner, dict):
            return str(inner.get("message") or inner)
        return str(error.get("message") or error)
    return str(error or "")


def _context_window(model_usage: Any) -> int:
    if isinstance(model_usage, dict):
        for entry in model_usage.values():
            if isinstance(entry, dict) and isinstance(entry.get("contextWindow"), int):
                return int(entry["contextWindow"])
    return 0
