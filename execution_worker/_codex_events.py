"""Mapping a Codex turn's notifications to runtime events.

`CodexTurn` is what the runtime knows about the running turn; `notification_events()` turns
one app-server notification into the runtime events it means (items, deltas, token usage,
errors, and the terminal event once `turn/completed` comes for this turn). Server requests
(approvals) are `_codex_approvals`' business.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

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

# Notifications with nothing for a session's log.
DROPPED_NOTIFICATIONS = frozenset(
    {
        "account/rateLimits/updated",
        "thread/readState/changed",
        "remoteControl/status/changed",
        "thread/started",  # may trail thread/start's answer into the first turn; says nothing new
    }
)

_DELTA_KINDS = {
    "item/agentMessage/delta": DeltaKind.AGENT_MESSAGE,
    "item/commandExecution/outputDelta": DeltaKind.COMMAND_OUTPUT,
    "item/reasoning/summaryTextDelta": DeltaKind.REASONING,
    "item/fileChange/outputDelta": DeltaKind.FILE_CHANGE,
}


@dataclass
class CodexTurn:
    """The running turn: its queue of messages from app-server and what it has seen so far."""

    turn_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    codex_turn_id: str | None = None
    interrupt_reason: str | None = None
    interrupt_deadline: float | None = None
    interrupt_sent: bool = False
    last_error: str = ""
    # Reconnects Codex announced (`error` with willRetry) since the model last answered, and,
    # once they pass the bound, why the runtime gave up on the turn.
    reconnects: int = 0
    gave_up: str | None = None
    file_paths: dict[str, list[str]] = field(default_factory=dict)  # fileChange item id -> paths
    request_ids: set[str] = field(default_factory=set)  # its pending requests (see _codex_approvals)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # The model-visible items read from the rollout file so far, and whether its end was read.
    history: list[HistoryItem] = field(default_factory=list)
    history_complete: bool = False


def announces_turn_end(message: dict[str, Any]) -> bool:
    """Whether the message is the thread going idle: Codex sends it as a turn ends, just before
    that turn's `turn/completed`."""
    if message.get("method") != "thread/status/changed" or "id" in message:
        return False
    params = message.get("params")
    status = params.get("status") if isinstance(params, dict) else None
    return isinstance(status, dict) and status.get("type") == "idle"


def notification_events(turn: CodexTurn, method: str, params: dict[str, Any]) -> Iterator[RuntimeEvent]:
    """The runtime events one notification of `turn`'s means (it may update `turn`)."""
    if method in _DELTA_KINDS:
        yield ItemDelta(str(params.get("itemId", "")), _DELTA_KINDS[method], str(params.get("delta", "")))
    elif method in ("item/started", "item/completed"):
        raw = params.get("item")
        if not isinstance(raw, dict):
            return
        if raw.get("type") == "fileChange":
            turn.file_paths[str(raw.get("id", ""))] = [
                str(c.get("path", "")) for c in raw.get("changes") or [] if isinstance(c, dict)
            ]
        item = item_from_codex(raw)
        yield ItemStarted(item) if method == "item/started" else ItemCompleted(item)
    elif method == "thread/tokenUsage/updated":
        yield _token_usage(params)
    elif method == "error":
        error = params.get("error") or {}
        turn.last_error = _error_text(error) or turn.last_error
        yield AgentError(_error_text(error), bool(params.get("willRetry")), _error_code(error.get("codexErrorInfo")))
    elif method == "turn/completed":
        codex_turn = params.get("turn") or {}
        if codex_turn.get("id") == turn.codex_turn_id:
            yield terminal_for(turn, codex_turn)
    elif method not in DROPPED_NOTIFICATIONS:
        yield RawEvent(method, json.dumps(params))


def terminal_for(turn: CodexTurn, codex_turn: dict[str, Any]) -> RuntimeEvent:
    """The terminal event for a `turn/completed` of `turn`'s."""
    status = codex_turn.get("status")
    if status == "completed":
        return TurnCompleted()
    if status == "interrupted":
        return TurnInterrupted(turn.interrupt_reason or "interrupted")
    error = codex_turn.get("error") or {}
    message = _error_text(error) or turn.last_error or f"codex turn ended with status {status!r}"
    code = _error_code(error.get("codexErrorInfo"))
    return TurnFailed(f"{message} ({code})" if code else message)


def _item_kind(kind: str) -> ItemKind:
    return {
        "userMessage": ItemKind.USER_MESSAGE,
        "agentMessage": ItemKind.AGENT_MESSAGE,
        "reasoning": ItemKind.REASONING,
        "commandExecution": ItemKind.COMMAND_EXECUTION,
        "fileChange": ItemKind.FILE_CHANGE,
        "mcpToolCall": ItemKind.TOOL_CALL,
        "dynamicToolCall": ItemKind.TOOL_CALL,
        "collabAgentToolCall": ItemKind.TOOL_CALL,
        "webSearch": ItemKind.TOOL_CALL,
        "imageView": ItemKind.TOOL_CALL,
        "imageGeneration": ItemKind.TOOL_CALL,
        "functionCallOutput": ItemKind.TOOL_CALL,
    }.get(kind, ItemKind.OTHER)


def _item_text(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if kind == "userMessage":
        return "".join(str(part.get("text", "")) for part in item.get("content") or [] if isinstance(part, dict))
    if kind == "reasoning":
        return "\n".join(str(s) for s in (item.get("summary") or item.get("content") or []))
    if kind == "mcpToolCall":
        return f"{item.get('server', '')}.{item.get('tool', '')}({json.dumps(item.get('arguments'))})"
    if kind == "dynamicToolCall":
        return f"{item.get('tool', '')}({json.dumps(item.get('arguments'))})"
    if kind == "webSearch":
        return str(item.get("query") or "")
    if kind == "imageView":
        return str(item.get("path") or "")
    if kind == "functionCallOutput":
        output = item.get("output")
        return output if isinstance(output, str) else json.dumps(output)
    text = item.get("text")
    return text if isinstance(text, str) else ""


def item_from_codex(item: dict[str, Any]) -> Item:
    """A Codex ThreadItem as a runtime `Item`, with the JSON kept in `raw_json`."""
    changes = tuple(
        FileChange(
            path=str(change.get("path", "")),
            kind=str((change.get("kind") or {}).get("type", "")),
            diff=str(change.get("diff") or ""),
        )
        for change in item.get("changes") or []
        if isinstance(change, dict)
    )
    exit_code = item.get("exitCode")
    return Item(
        item_id=str(item.get("id", "")),
        kind=_item_kind(str(item.get("type", ""))),
        text=_item_text(item),
        command=str(item.get("command") or ""),
        cwd=str(item.get("cwd") or ""),
        status=str(item.get("status") or ""),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        aggregated_output=str(item.get("aggregatedOutput") or ""),
        changes=changes,
        raw_json=json.dumps(item),
    )


def _token_usage(params: dict[str, Any]) -> TokenUsage:
    usage = params.get("tokenUsage") or {}
    last = usage.get("last") or {}
    total = usage.get("total") or {}
    return TokenUsage(
        last_input_tokens=int(last.get("inputTokens") or 0),
        last_output_tokens=int(last.get("outputTokens") or 0),
        total_input_tokens=int(total.get("inputTokens") or 0),
        total_cached_input_tokens=int(total.get("cachedInputTokens") or 0),
        total_output_tokens=int(total.get("outputTokens") or 0),
        total_reasoning_output_tokens=int(total.get("reasoningOutputTokens") or 0),
        total_tokens=int(total.get("totalTokens") or 0),
        model_context_window=int(usage.get("modelContextWindow") or 0),
    )


def _error_code(info: Any) -> str:
    """codexErrorInfo is a string ("internalServerError") or a one-key object."""
    if isinstance(info, str):
        return info
    if isinstance(info, dict) and info:
        return next(iter(info))
    return ""


def _error_text(error: dict[str, Any]) -> str:
    message = str(error.get("message") or "")
    details = error.get("additionalDetails")
    return f"{message} ({details})" if details else message
