"""Building a session bundle from a read Codex rollout (see `tether.sdk.codex_import`): each
Codex turn's lines as a Tether turn and its events, the model-visible items as history items."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import urllib.parse
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tether.v1 import resources_pb2 as pb

from ._rollout_reader import CodexTurn, Line, RolloutError, Thread

__all__ = ["BUNDLE_VERSION", "Builder"]

#: The bundle format version this module writes.
BUNDLE_VERSION = 1

# User messages Codex writes itself at the start of a thread; the worker's Codex writes its own.
# The same rule as the worker's (execution_worker/_codex_rollout.py, is_model_visible).
_CONTEXT_PREFIXES = ("<environment_context>", "<user_instructions>", "# AGENTS.md instructions for")
# Codex's bookkeeping inside a response item; not part of the Responses API item.
_CODEX_BOOKKEEPING = "internal_chat_message_metadata_passthrough"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TITLE_MAX = 100


# -- the items ----------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


def _is_model_visible(item: dict[str, Any]) -> bool:
    if item.get("type") != "message":
        return True
    role = item.get("role")
    if role == "developer":
        return False
    if role == "user":
        return not _content_text(item.get("content")).lstrip().startswith(_CONTEXT_PREFIXES)
    return True


def _history_item(item: dict[str, Any], raw_json: str, turn_id: str) -> pb.HistoryItem:
    """A Responses API item as a HistoryItem: its role, a readable text, and the item itself."""
    kind = str(item.get("type", ""))
    role = pb.HISTORY_ITEM_ROLE_OUTPUT
    if kind == "message":
        role = pb.HISTORY_ITEM_ROLE_OUTPUT if item.get("role") == "assistant" else pb.HISTORY_ITEM_ROLE_INPUT
        text = _content_text(item.get("content"))
    elif kind == "function_call":
        role, text = pb.HISTORY_ITEM_ROLE_TOOL_CALL, f"{item.get('name', '')}({item.get('arguments', '')})"
    elif kind == "custom_tool_call":
        role, text = pb.HISTORY_ITEM_ROLE_TOOL_CALL, f"{item.get('name', '')}: {item.get('input', '')}"
    elif kind.endswith("_output"):
        output = item.get("output", "")
        if isinstance(output, dict):
            output = output.get("content", output)
        role = pb.HISTORY_ITEM_ROLE_TOOL_OUTPUT
        text = output if isinstance(output, str) else _content_text(output) or json.dumps(output)
    elif kind.endswith("_call"):
        action = item.get("action")
        action = action if isinstance(action, dict) else {}
        command = action.get("command")
        role = pb.HISTORY_ITEM_ROLE_TOOL_CALL
        if isinstance(command, list):
            text = " ".join(str(part) for part in command)
        elif action.get("query"):
            text = f"web search: {action['query']}"
        else:
            text = kind
    elif kind == "reasoning":
        text = _reasoning_text(item)
    else:
        text = f"[{kind}]"
    return pb.HistoryItem(role=role, text=text, turn_id=turn_id, raw_json=raw_json)


def _reasoning_text(item: dict[str, Any]) -> str:
    summary = item.get("summary")
    parts = summary if isinstance(summary, list) else []
    return "\n".join(str(part.get("text", "")) for part in parts if isinstance(part, dict))


def _shown_item(item: dict[str, Any], raw_json: str, number: int) -> pb.Item | None:
    """The Item people see for a model-visible item, when there is one (agent messages and
    reasoning summaries; commands and file changes come from item_completed events)."""
    item_id = str(item.get("id") or f"line-{number}")
    if item.get("type") == "message" and item.get("role") == "assistant":
        text = _content_text(item.get("content"))
        return pb.Item(
            item_id=item_id, kind=pb.ITEM_KIND_AGENT_MESSAGE, text=text, status="completed", raw_json=raw_json
        )
    if item.get("type") == "reasoning" and _reasoning_text(item):
        return pb.Item(
            item_id=item_id,
            kind=pb.ITEM_KIND_REASONING,
            text=_reasoning_text(item),
            status="completed",
            raw_json=raw_json,
        )
    return None


def _completed_item(item: dict[str, Any]) -> pb.Item | None:
    """An event_msg item_completed's command or file change as an Item; None for other kinds."""
    kind = item.get("type")
    if kind == "CommandExecution":
        command = item.get("command")
        exit_code = item.get("exit_code")
        shown = pb.Item(
            item_id=str(item.get("id", "")),
            kind=pb.ITEM_KIND_COMMAND_EXECUTION,
            command=shlex.join(str(c) for c in command) if isinstance(command, list) else str(command or ""),
            cwd=_path_of(item.get("cwd")),
            status=str(item.get("status") or ""),
            aggregated_output=str(item.get("aggregated_output") or ""),
            raw_json=json.dumps(item),
        )
        if isinstance(exit_code, int) and not isinstance(exit_code, bool):
            shown.exit_code = exit_code
        return shown
    if kind == "FileChange":
        return pb.Item(
            item_id=str(item.get("id", "")),
            kind=pb.ITEM_KIND_FILE_CHANGE,
            status=str(item.get("status") or ""),
            changes=list(_file_changes(item.get("changes"))),
            raw_json=json.dumps(item),
        )
    return None


def _path_of(cwd: Any) -> str:
    text = str(cwd or "")
    if text.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(text).path)
    return text


def _file_changes(changes: Any) -> Iterable[pb.FileChange]:
    entries: Iterable[tuple[Any, Any]]
    if isinstance(changes, dict):
        entries = changes.items()
    elif isinstance(changes, list):
        entries = ((c.get("path"), c) for c in changes if isinstance(c, dict))
    else:
        entries = ()
    for path, change in entries:
        change = change if isinstance(change, dict) else {}
        kind = change.get("type", change.get("kind", ""))
        kind = kind.get("type", "") if isinstance(kind, dict) else kind
        diff = change.get("unified_diff") or change.get("diff") or change.get("content") or ""
        yield pb.FileChange(path=str(path or ""), kind=str(kind), diff=str(diff))


def _token_usage(info: dict[str, Any]) -> pb.TokenUsage:
    total = info.get("total_token_usage") or {}
    last = info.get("last_token_usage") or {}

    def count(usage: Any, key: str) -> int:
        value = usage.get(key) if isinstance(usage, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return pb.TokenUsage(
        last_input_tokens=count(last, "input_tokens"),
        last_output_tokens=count(last, "output_tokens"),
        total_input_tokens=count(total, "input_tokens"),
        total_cached_input_tokens=count(total, "cached_input_tokens"),
        total_output_tokens=count(total, "output_tokens"),
        total_reasoning_output_tokens=count(total, "reasoning_output_tokens"),
        total_tokens=count(total, "total_tokens"),
        model_context_window=count(info, "model_context_window"),
    )


def _camel(code: Any) -> str:
    """Codex's error codes as the app-server names them ("internal_server_error" ->
    "internalServerError"), as the worker's turns carry them."""
    if isinstance(code, dict) and code:
        code = next(iter(code))
    if not isinstance(code, str) or not code:
        return ""
    head, *rest = code.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


# -- writing ----------------------------------------------------------------------------------


def _default_title(text: str) -> str:
    """A session's title from its first input, as the control plane takes it: the first
    non-blank line, whitespace-collapsed, cut to 100 characters with an ellipsis."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if len(line) > _TITLE_MAX:
        line = line[: _TITLE_MAX - 1].rstrip() + "\u2026"
    return line


class _Ids:
    """Sortable ids like the control plane's: 48 bits of milliseconds then 80 random bits, in
    Crockford base32, strictly increasing in the order they are made."""

    def __init__(self) -> None:
        self._last = 0

    def new(self, prefix: str, at: Timestamp) -> str:
        value = (max(at.ToMilliseconds(), 0) << 80) | int.from_bytes(os.urandom(10), "big")
        value = max(value, self._last + 1)
        self._last = value
        chars = "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))
        return f"{prefix}_{chars}"


def _as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Builder:
    def __init__(self, thread: Thread, runtime: str) -> None:
        self.thread = thread
        self.runtime = runtime
        self.ids = _Ids()
        self.session_id = self.ids.new("ses", thread.meta.time)
        self.events: list[pb.Event] = []
        self.turns: list[pb.Turn] = []
        self._clock = 0  # nanoseconds of the last event, so times never go back

    def bundle(self) -> bytes:
        meta = self.thread.meta.payload
        for codex_turn in self.thread.turns:
            self._turn(codex_turn)
        if not self.turns:
            raise RolloutError(0, "no turn of the rollout added anything to the model-visible history")
        version = str(meta.get("cli_version", ""))
        labels = {"imported-from": "codex", "codex-cli-version": version[:256]}
        thread_id = meta.get("id") or meta.get("session_id")
        if isinstance(thread_id, str) and thread_id:
            labels["codex-thread-id"] = thread_id[:256]
        created = Timestamp()
        try:
            created.FromJsonString(str(meta.get("timestamp")))
        except ValueError:
            created.CopyFrom(self.thread.meta.time)
        session = pb.Session(
            session_id=self.session_id,
            runtime=self.runtime,
            labels=labels,
            create_time=created,
            title=_default_title(self.turns[0].input),
        )
        header = {
            "tether_bundle": BUNDLE_VERSION,
            "exported_at": datetime.datetime.now(datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "exported_by": f"tether.sdk.codex_import, from a Codex CLI {version} rollout",
        }
        lines: list[dict[str, Any]] = [header, {"session": _as_json(session)}]
        lines += [{"turn": _as_json(turn)} for turn in self.turns]
        lines += [{"event": _as_json(event)} for event in self.events]
        lines.append({"end": {"turns": len(self.turns), "events": len(self.events), "requests": 0, "snapshots": 0}})
        return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")

    def _emit(self, turn_id: str, at: Timestamp, body: pb.EventBody) -> None:
        self._clock = max(self._clock, at.ToNanoseconds())
        time = Timestamp()
        time.FromNanoseconds(self._clock)
        self.events.append(
            pb.Event(
                session_id=self.session_id,
                seq=len(self.events) + 1,
                turn_id=turn_id,
                create_time=time,
                body=body,
            )
        )

    def _turn(self, codex_turn: CodexTurn) -> None:
        lines = [*codex_turn.before, *codex_turn.lines, *codex_turn.after]
        own = {line.number for line in codex_turn.lines}
        visible: list[tuple[Line, dict[str, Any], str]] = []
        for line in lines:
            if line.kind == "response_item" and _is_model_visible(line.payload):
                item = {k: v for k, v in line.payload.items() if k != _CODEX_BOOKKEEPING}
                visible.append((line, item, json.dumps(item)))
        if not visible:
            return  # nothing the model sees: the turn is left out (see the module's docstring)
        text = next(
            (
                _content_text(item.get("content"))
                for line, item, _ in visible
                if line.number in own and item.get("type") == "message" and item.get("role") == "user"
            ),
            "",
        )
        started = codex_turn.start.time
        turn_id = self.ids.new("trn", started)
        turn = pb.Turn(turn_id=turn_id, session_id=self.session_id, input=text, create_time=started, start_time=started)
        first_seq = len(self.events) + 1
        self._emit(turn_id, started, pb.EventBody(input_received=pb.InputReceived(input=text)))
        self._emit(turn_id, started, pb.EventBody(turn_started=pb.TurnStarted()))
        raw_of = {line.number: (item, raw) for line, item, raw in visible}
        last_time = started
        for line in lines:
            last_time = line.time
            if line.number in raw_of:
                item, raw = raw_of[line.number]
                shown = _shown_item(item, raw, line.number)
                if shown is not None:
                    self._emit(turn_id, line.time, pb.EventBody(item_completed=pb.ItemCompleted(item=shown)))
                    if shown.kind == pb.ITEM_KIND_AGENT_MESSAGE:
                        turn.final_message = shown.text
                history = _history_item(item, raw, turn_id)
                self._emit(turn_id, line.time, pb.EventBody(history_item=history))
            elif line.event == "item_completed" and isinstance(line.payload.get("item"), dict):
                completed = _completed_item(line.payload["item"])
                if completed is not None:
                    self._emit(turn_id, line.time, pb.EventBody(item_completed=pb.ItemCompleted(item=completed)))
            elif line.event == "token_count" and isinstance(line.payload.get("info"), dict):
                usage = _token_usage(line.payload["info"])
                turn.usage.CopyFrom(usage)
                self._emit(turn_id, line.time, pb.EventBody(token_usage=usage))
        self._end(turn, codex_turn, last_time)
        turn.first_seq = first_seq
        turn.last_seq = len(self.events)
        turn.end_time.CopyFrom(self.events[-1].create_time)
        self.turns.append(turn)

    def _end(self, turn: pb.Turn, codex_turn: CodexTurn, last_time: Timestamp) -> None:
        end = codex_turn.end
        if end is None:
            turn.state = pb.TURN_STATE_INTERRUPTED
            turn.error_message = codex_turn.unended
            body = pb.EventBody(turn_interrupted=pb.TurnInterrupted(reason=turn.error_message))
            self._emit(turn.turn_id, last_time, body)
            return
        if end.event == "turn_aborted":
            turn.state = pb.TURN_STATE_INTERRUPTED
            turn.error_message = f"Codex aborted the turn ({end.payload.get('reason') or 'interrupted'})"
            self._emit(
                turn.turn_id, end.time, pb.EventBody(turn_interrupted=pb.TurnInterrupted(reason=turn.error_message))
            )
            return
        error = end.payload.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or "the turn failed in Codex")
            code = _camel(error.get("codex_error_info"))
            turn.state = pb.TURN_STATE_FAILED
            turn.error_message = f"{message} ({code})" if code else message
            agent_error = pb.AgentError(message=message, will_retry=False, code=code)
            self._emit(turn.turn_id, end.time, pb.EventBody(agent_error=agent_error))
            self._emit(
                turn.turn_id, end.time, pb.EventBody(turn_failed=pb.TurnFailed(error_message=turn.error_message))
            )
            return
        turn.state = pb.TURN_STATE_COMPLETED
        if not turn.final_message and isinstance(end.payload.get("last_agent_message"), str):
            turn.final_message = end.payload["last_agent_message"]
        self._emit(turn.turn_id, end.time, pb.EventBody(turn_completed=pb.TurnCompleted()))
