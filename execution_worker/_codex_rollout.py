"""The model-visible history of a Codex thread: reading it from the thread's rollout file, and
converting between Responses API items and the runtime's `HistoryItem`.

Codex appends every item it sends the model to the rollout file (`thread.path`) as a
`response_item` line, between the turn's `task_started` and its `task_complete` /
`turn_aborted` event lines. Items written outside a turn are the history a `thread/resume` was
given, which the runtime already holds. Rehydration hands history back verbatim (`raw_json`);
history another runtime recorded is rendered as messages.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tether.execution_worker._codex_errors import CodexError
from tether.execution_worker.runtime import HistoryItem, HistoryRole

_log = logging.getLogger("tether.execution_worker._codex")

# Rollout event lines that end a turn.
_TURN_END_MARKERS = frozenset({"task_complete", "turn_aborted"})
# User messages Codex writes itself at the start of a thread (and writes again after a resume).
_CONTEXT_PREFIXES = ("<environment_context>", "<user_instructions>", "# AGENTS.md instructions for")


def _text_of_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


def history_to_raw(item: HistoryItem) -> dict[str, Any]:
    """The Responses API item to hand Codex for a history item: its raw JSON when it has one,
    else a message rendering its text (history recorded by another runtime)."""
    if item.raw_json:
        try:
            raw = json.loads(item.raw_json)
        except ValueError as error:
            raise CodexError(f"history item has raw_json that is not JSON: {error}") from error
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise CodexError("history item has raw_json that is not a Responses API item")
        return raw
    if item.role is HistoryRole.INPUT:
        return _message("user", item.text)
    if item.role is HistoryRole.OUTPUT:
        return _message("assistant", item.text)
    if item.role is HistoryRole.TOOL_CALL:
        return _message("assistant", f"[tool call] {item.text}")
    return _message("user", f"[tool output] {item.text}")


def _message(role: str, text: str) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


def is_model_visible(item: dict[str, Any]) -> bool:
    """False for what Codex regenerates itself in every thread (its developer prompts and
    context messages): keeping them would duplicate them after a rehydration."""
    if item.get("type") != "message":
        return True
    role = item.get("role")
    if role == "developer":
        return False
    if role == "user":
        return not _text_of_content(item.get("content")).lstrip().startswith(_CONTEXT_PREFIXES)
    return True


def raw_to_history(item: dict[str, Any], turn_id: str) -> HistoryItem:
    """A Responses API item as a history item: role, a readable text, and the item verbatim."""
    kind = item.get("type", "")
    if kind == "message":
        role = HistoryRole.OUTPUT if item.get("role") == "assistant" else HistoryRole.INPUT
        text = _text_of_content(item.get("content"))
    elif kind == "function_call":
        role, text = HistoryRole.TOOL_CALL, f"{item.get('name', '')}({item.get('arguments', '')})"
    elif kind == "custom_tool_call":
        role, text = HistoryRole.TOOL_CALL, f"{item.get('name', '')}: {item.get('input', '')}"
    elif kind == "local_shell_call":
        action = item.get("action") or {}
        command = action.get("command") if isinstance(action, dict) else None
        role, text = HistoryRole.TOOL_CALL, " ".join(command) if isinstance(command, list) else json.dumps(action)
    elif kind == "web_search_call":
        action = item.get("action") or {}
        role = HistoryRole.TOOL_CALL
        text = f"web search: {action.get('query', '')}" if isinstance(action, dict) else "web search"
    elif kind.endswith("_output"):
        output = item.get("output", "")
        if isinstance(output, dict):  # some tools wrap the text
            output = output.get("content", output)
        role = HistoryRole.TOOL_OUTPUT
        text = output if isinstance(output, str) else _text_of_content(output) or json.dumps(output)
    elif kind == "reasoning":
        summary = item.get("summary") or []
        role, text = HistoryRole.OUTPUT, "\n".join(str(s.get("text", "")) for s in summary if isinstance(s, dict))
    elif kind.endswith("_call"):
        role, text = HistoryRole.TOOL_CALL, kind
    else:
        role, text = HistoryRole.OUTPUT, f"[{kind}]"
    return HistoryItem(role, text, turn_id, raw_json=json.dumps(item))


class Rollout:
    """Reads the response items a thread's rollout file gains, attributed to their Codex turn."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self._turn: str | None = None  # the Codex turn whose lines we are reading, if any
        self.ended: set[str] = set()  # Codex turns whose end marker was read and not yet taken

    def read(self) -> list[tuple[str | None, dict[str, Any]]]:
        """New `response_item` payloads, each with the Codex turn it belongs to (None: written
        outside a turn, i.e. the history a resume was given)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:  # Codex creates it with the first turn
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unterminated last line is still being written
        items: list[tuple[str | None, dict[str, Any]]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                _log.warning("skipping an unreadable line of %s", self.path)
                continue
            kind = entry.get("type")
            payload = entry.get("payload")
            if not isinstance(payload, dict):
                continue
            if kind == "response_item":
                items.append((self._turn, payload))
            elif kind == "turn_context" and payload.get("turn_id"):
                self._turn = str(payload["turn_id"])
            elif kind == "event_msg":
                event = payload.get("type")
                if event == "task_started":
                    attribution = payload.get("turn_attribution") or {}
                    turn = attribution.get("turn_id") or payload.get("turn_id")
                    self._turn = str(turn) if turn else self._turn
                elif event in _TURN_END_MARKERS:
                    self.ended.add(str(payload.get("turn_id", "")))
                    self._turn = None
        return items

    def take_end(self, codex_turn_id: str) -> bool:
        """Whether the end marker of `codex_turn_id` was read. Taking it forgets every marker
        read so far: the file is sequential, so no earlier turn has lines left to come."""
        if codex_turn_id not in self.ended:
            return False
        self.ended.clear()
        return True
