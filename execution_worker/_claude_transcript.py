"""The model-visible history of a Claude Code session: Claude's own messages as the runtime's
`HistoryItem`s, and back into the transcript a fresh `claude --resume` reads.

Each user and assistant message of the main conversation (the turn's input, each assistant
content block as Claude streams it, tool results) becomes one history item whose `raw_json` is
the Messages API message exactly as Claude gave it. History recorded otherwise (another runtime,
or the worker's marker after a turn lost with its worker) is rendered as plain text messages.

Claude Code keeps a session's transcript at
`$CLAUDE_CONFIG_DIR/projects/<cwd, every character but [A-Za-z0-9] as "->/<session id>.jsonl`,
one JSON entry per line, each message chained to the one before by `parentUuid`. Claude writes
many other entry kinds there (attachments, request records, costs); a resume needs only the
messages, which is what `write_transcript` writes.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.execution_worker.runtime import HistoryItem, HistoryRole

_UNSAFE = re.compile(r"[^A-Za-z0-9]")


class TranscriptError(Exception):
    """The history cannot be written as a Claude transcript."""


def project_dir(config_dir: Path, cwd: Path) -> Path:
    """Where Claude Code keeps the transcripts of sessions run in `cwd`."""
    return config_dir / "projects" / _UNSAFE.sub("-", str(cwd))


def input_item(text: str, turn_id: str) -> HistoryItem:
    """A turn's input as the user message Claude gets."""
    return history_item({"role": "user", "content": [{"type": "text", "text": text}]}, turn_id)


def history_item(message: dict[str, Any], turn_id: str) -> HistoryItem:
    """One Messages API message (`{"role": ..., "content": ...}`) as a history item, verbatim."""
    content = message.get("content")
    blocks = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
    kinds = {b.get("type") for b in blocks if isinstance(b, dict)}
    if message.get("role") == "assistant":
        if "tool_use" in kinds:
            role = HistoryRole.TOOL_CALL
            text = "; ".join(
                f"{b.get('name', '')}({json.dumps(b.get('input'))})"
                for b in blocks
                if isinstance(b, dict) and b.get("type") == "tool_use"
            )
        else:
            role, text = HistoryRole.OUTPUT, _text(blocks)
    elif "tool_result" in kinds:
        role = HistoryRole.TOOL_OUTPUT
        text = "\n".join(
            _text(b.get("content")) for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"
        )
    else:
        role, text = HistoryRole.INPUT, _text(blocks)
    return HistoryItem(role, text, turn_id, raw_json=json.dumps(message))


def history_to_message(item: HistoryItem) -> dict[str, Any]:
    """The message to write back for a history item: its raw JSON when it is a Claude message,
    else a message rendering its text."""
    if item.raw_json:
        try:
            raw = json.loads(item.raw_json)
        except ValueError as error:
            raise TranscriptError(f"history item has raw_json that is not JSON: {error}") from error
        if isinstance(raw, dict) and raw.get("role") in ("user", "assistant") and "content" in raw:
            return raw
    if item.role is HistoryRole.INPUT:
        return {"role": "user", "content": [{"type": "text", "text": item.text}]}
    if item.role is HistoryRole.TOOL_OUTPUT:
        return {"role": "user", "content": [{"type": "text", "text": f"[tool output] {item.text}"}]}
    text = item.text if item.role is HistoryRole.OUTPUT else f"[tool call] {item.text}"
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def write_transcript(
    path: Path, *, session_uuid: str, cwd: Path, version: str, model: str, history: list[HistoryItem]
) -> int:
    """Write `history` as the transcript of Claude session `session_uuid` run in `cwd`; returns
    the number of messages written. Raises TranscriptError for history it cannot write."""
    lines = []
    parent: str | None = None
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{datetime.now(UTC).microsecond // 1000:03d}Z"
    for index, item in enumerate(history):
        try:
            message = history_to_message(item)
        except TranscriptError as error:
            raise TranscriptError(f"history item {index} (turn {item.turn_id or '?'}): {error}") from None
        if message["role"] == "assistant":
            # Claude reads an assistant entry as a whole API message.
            message = {
                "id": f"msg_tether_{index}",
                "type": "message",
                "model": model or "tether-history",
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
                **message,
            }
        entry_uuid = str(uuid.uuid4())
        entry = {
            "parentUuid": parent,
            "isSidechain": False,
            "userType": "external",
            "cwd": str(cwd),
            "sessionId": session_uuid,
            "version": version,
            "type": message["role"],
            "message": message,
            "uuid": entry_uuid,
            "timestamp": now,
        }
        lines.append(json.dumps(entry, separators=(",", ":")))
        parent = entry_uuid
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
    return len(lines)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
