"""The Codex runtime: each session drives its own `codex app-server` process over stdio.

One process per session, spawned by `start()` in the session's workspace with a CODEX_HOME of
its own (`<session>/codex-home`, into which a logged-in user's `auth.json` and `config.toml`
are copied). The wire is JSON-RPC without the "jsonrpc" field, one object per line. A reader
task routes responses to the request waiting for them and notifications and server requests
(approvals) to the running turn, which maps them to runtime events.

Model-visible history comes from the thread's rollout file (`thread.path`), not from the
notifications: Codex appends every item it sends the model there as a `response_item` line,
between the turn's `task_started` and its `task_complete` / `turn_aborted` event lines. Items
written outside a turn are the history a `thread/resume` was given, which we already hold.
Rehydration hands that history back verbatim through `thread/resume` with `history` (an
experimental field; Codex then makes a new thread id) and fails closed: a session with history
never silently continues on an empty thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.execution_worker._child import when_exited
from tether.execution_worker._runtime import (
    AgentError,
    DeltaKind,
    FileChange,
    HistoryAppended,
    HistoryItem,
    HistoryRole,
    Item,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    RawEvent,
    RequestKind,
    RequestOpened,
    Runtime,
    RuntimeEvent,
    TokenUsage,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    new_request_id,
    session_workspace,
)

_log = logging.getLogger(__name__)

SANDBOX_MODES = ("read-only", "workspace-write", "danger-full-access")
APPROVAL_POLICIES = ("untrusted", "on-request", "on-failure", "never")

#: Always passed: no plugin sync (the only outbound traffic of its own), no analytics, no
#: update check.
BASE_CONFIG = ("features.plugins=false", "analytics.enabled=false", "check_for_update_on_startup=false")
#: Copied from the user's CODEX_HOME into each session's, when present.
HOME_FILES = ("auth.json", "config.toml")

#: A stdout line is one JSON message; turn items carry whole command outputs and diffs.
STREAM_LIMIT = 64 * 1024 * 1024
#: How long `close()` waits for app-server to exit once its stdin is closed.
EXIT_GRACE_S = 2.0
#: How long a turn waits for `turn/completed` after `turn/interrupt` before giving up on it.
INTERRUPT_GRACE_S = 10.0
#: How long, after `turn/completed`, to wait for the turn's end marker in the rollout file.
ROLLOUT_FLUSH_WAIT_S = 2.0
_ROLLOUT_POLL_S = 0.02
_STDERR_TAIL_LINES = 20

# Notifications with nothing for a session's log.
_DROPPED_NOTIFICATIONS = frozenset(
    {
        "account/rateLimits/updated",
        "thread/readState/changed",
        "remoteControl/status/changed",
        "thread/started",  # may trail thread/start's answer into the first turn; says nothing new
    }
)
# Rollout event lines that end a turn.
_TURN_END_MARKERS = frozenset({"task_complete", "turn_aborted"})
# User messages Codex writes itself at the start of a thread (and writes again after a resume).
_CONTEXT_PREFIXES = ("<environment_context>", "<user_instructions>", "# AGENTS.md instructions for")
_DEFAULT_DECISIONS = ("accept", "acceptForSession", "decline", "cancel")
_EXITED = object()  # queued to the running turn when app-server is gone
_WAKE = object()  # queued to the running turn when an interrupt asks it to watch the clock


@dataclass(frozen=True)
class CodexSettings:
    """How the Codex runtime runs `codex app-server` (the worker's `--codex-*` flags)."""

    #: The `codex` executable: a path, or a name looked up on PATH.
    bin: str = "codex"
    #: None: Codex's own default model.
    model: str | None = None
    sandbox: str = "workspace-write"
    approval_policy: str = "on-request"
    #: `KEY=TOML` overrides passed as `-c KEY=TOML`, after the built-in ones.
    config: tuple[str, ...] = ()
    #: Where a logged-in user's auth.json / config.toml are copied from; None: $CODEX_HOME,
    #: else ~/.codex.
    home_from: Path | None = None
    #: Deadline of every JSON-RPC request to app-server (initialize, thread/start, ...).
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", tuple(self.config))
        if self.home_from is not None:
            object.__setattr__(self, "home_from", Path(self.home_from))
        if not self.bin:
            raise ValueError("the codex binary must not be empty")
        if self.sandbox not in SANDBOX_MODES:
            raise ValueError(f"codex sandbox must be one of {', '.join(SANDBOX_MODES)}, got {self.sandbox!r}")
        if self.approval_policy not in APPROVAL_POLICIES:
            raise ValueError(
                f"codex approval policy must be one of {', '.join(APPROVAL_POLICIES)}, got {self.approval_policy!r}"
            )
        for entry in self.config:
            key, sep, _ = entry.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"codex config override {entry!r} is not of the form KEY=TOML")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")

    def resolved_home_from(self) -> Path:
        if self.home_from is not None:
            return self.home_from
        env_home = os.environ.get("CODEX_HOME")
        return Path(env_home) if env_home else Path.home() / ".codex"


class CodexError(Exception):
    """app-server could not do what the runtime asked."""


class CodexRpcError(CodexError):
    """app-server answered a request with a JSON-RPC error."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method} failed: {message} (code {code})")
        self.method = method
        self.code = code
        self.rpc_message = message


class CodexExited(CodexError):
    """app-server is gone."""


def _tether_version() -> str:
    try:
        return importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


# -- history conversion --------------------------------------------------------------------------


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


def _is_model_visible(item: dict[str, Any]) -> bool:
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


# -- notifications to events ---------------------------------------------------------------------


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


def _decisions(params: dict[str, Any]) -> tuple[str, ...]:
    available = params.get("availableDecisions")
    if not isinstance(available, list):
        return _DEFAULT_DECISIONS
    names: list[str] = []
    for decision in available:
        if isinstance(decision, str):
            names.append(decision)
        elif isinstance(decision, dict) and decision:
            names.append(next(iter(decision)))
    return tuple(names)


_DELTA_KINDS = {
    "item/agentMessage/delta": DeltaKind.AGENT_MESSAGE,
    "item/commandExecution/outputDelta": DeltaKind.COMMAND_OUTPUT,
    "item/reasoning/summaryTextDelta": DeltaKind.REASONING,
    "item/fileChange/outputDelta": DeltaKind.FILE_CHANGE,
}


# -- the rollout file ----------------------------------------------------------------------------


class _Rollout:
    """Reads the response items a thread's rollout file gains, attributed to their Codex turn."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self._turn: str | None = None  # the Codex turn whose lines we are reading, if any
        self.ended: set[str] = set()  # Codex turns whose end marker was read

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


# -- the runtime ---------------------------------------------------------------------------------


@dataclass
class _Turn:
    """The running turn: its queue of messages from app-server and what it has seen so far."""

    turn_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    codex_turn_id: str | None = None
    interrupt_reason: str | None = None
    interrupt_deadline: float | None = None
    interrupt_sent: bool = False
    last_error: str = ""
    file_paths: dict[str, list[str]] = field(default_factory=dict)  # fileChange item id -> paths
    request_ids: set[str] = field(default_factory=set)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class _Process:
    """`codex app-server` as a child process with asyncio pipes.

    Spawned with `subprocess.Popen` (see `_child`): through uvloop's own spawn, about one start
    in fifteen died with SIGSEGV before exec in the end-to-end tests.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @classmethod
    async def spawn(cls, args: list[str], *, cwd: Path, env: dict[str, str]) -> _Process:
        popen = subprocess.Popen(  # noqa: ASYNC220 - on purpose, see the docstring
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            bufsize=0,
        )
        proc = cls(popen)
        await proc._attach()
        return proc

    async def _attach(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.popen.stdin and self.popen.stdout and self.popen.stderr
        self.stdout = asyncio.StreamReader(limit=STREAM_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.stdout), self.popen.stdout)
        self.stderr = asyncio.StreamReader(limit=STREAM_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.stderr), self.popen.stderr)
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), self.popen.stdin
        )
        self.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        when_exited(loop, self.popen, self._on_exit)

    def _on_exit(self) -> None:
        if not self._exited.done():
            self._exited.set_result(self.popen.wait())

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()


class CodexRuntime(Runtime):
    """Runs a session's turns in its own `codex app-server` process."""

    def __init__(self, settings: CodexSettings | None = None) -> None:
        self.settings = settings if settings is not None else CodexSettings()
        self._session_id = ""
        self._workspace: Path | None = None
        self._codex_home: Path | None = None
        self._proc: _Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr_reader: asyncio.Task[None] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exit_code: int | None = None
        self._thread_id = ""
        self._thread: dict[str, Any] = {}
        self._model = ""
        self._codex_version = ""
        self._rollout: _Rollout | None = None
        self._codex_turns: dict[str, str] = {}  # Codex turn id -> tether turn id
        self._history: list[HistoryItem] = []
        self._turn: _Turn | None = None
        self._requests: dict[str, tuple[int | str, _Turn]] = {}  # request_id -> (JSON-RPC id, turn)
        self._started = False
        self._closed = False
        self._close_done = asyncio.Event()

    # -- properties -------------------------------------------------------------------------------

    @property
    def workspace(self) -> Path | None:
        """The directory Codex works in, once started."""
        return self._workspace

    @property
    def codex_home(self) -> Path | None:
        """The session's own CODEX_HOME, once started."""
        return self._codex_home

    @property
    def pid(self) -> int | None:
        """The app-server process id, while it runs."""
        return self._proc.pid if self._proc is not None and self._exit_code is None else None

    @property
    def runtime_thread_id(self) -> str:
        return self._thread_id

    def runtime_metadata(self) -> dict[str, Any]:
        return {
            "runtime": "codex",
            "runtime_thread_id": self._thread_id,
            "model": self._model,
            "model_provider": self._thread.get("modelProvider") or "",
            "codex_version": self._codex_version,
            "sandbox": self.settings.sandbox,
            "approval_policy": self.settings.approval_policy,
            "rollout_path": str(self._rollout.path) if self._rollout else "",
        }

    def export_history(self) -> list[HistoryItem]:
        return list(self._history)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        if self._started or self._closed:
            raise CodexError("the codex runtime was already started")
        self._started = True
        base = session_workspace(Path(workdir), session_id)
        self._session_id = session_id
        self._workspace = base / "workspace"
        self._codex_home = base / "codex-home"
        # Converted before spawning anything: history we cannot hand over fails the start.
        raw_history = []
        for index, item in enumerate(history):
            try:
                raw_history.append(history_to_raw(item))
            except CodexError as error:
                raise CodexError(f"history item {index} (turn {item.turn_id or '?'}): {error}") from None
        self._workspace.mkdir(parents=True, exist_ok=True)
        self._codex_home.mkdir(parents=True, exist_ok=True)
        self._copy_home_files()
        try:
            await self._spawn()
            init = await self._request(
                "initialize",
                {
                    "clientInfo": {"name": "tether", "title": None, "version": _tether_version()},
                    "capabilities": {"experimentalApi": True},
                },
            )
            self._notify("initialized")
            self._codex_version = _version_from_user_agent(str((init or {}).get("userAgent", "")))
            params: dict[str, Any] = {
                "cwd": str(self._workspace),
                "approvalPolicy": self.settings.approval_policy,
                "sandbox": self.settings.sandbox,
            }
            if self.settings.model:
                params["model"] = self.settings.model
            if raw_history:
                # Codex ignores this id and makes a new thread holding exactly `history`.
                params = {"threadId": str(uuid.uuid4()), "history": raw_history, **params}
                result = await self._request("thread/resume", params)
            else:
                result = await self._request("thread/start", params)
        except BaseException as error:
            await self.close()
            if isinstance(error, CodexError):
                what = "rehydrating" if raw_history else "starting"
                raise CodexError(f"{what} the codex thread failed: {error}") from error
            raise
        thread = (result or {}).get("thread") or {}
        if not thread.get("id"):
            await self.close()
            raise CodexError(f"codex {'thread/resume' if raw_history else 'thread/start'} returned no thread id")
        self._thread = thread
        self._thread_id = str(thread["id"])
        self._model = str(result.get("model") or thread.get("model") or self.settings.model or "")
        self._codex_version = str(thread.get("cliVersion") or self._codex_version)
        self._history = list(history)
        if thread.get("path"):
            self._rollout = _Rollout(Path(thread["path"]))
            if raw_history:
                self._check_resumed_history(len(raw_history))
        else:
            _log.warning(
                "session %s: codex thread %s has no rollout file; history will not be recorded",
                session_id,
                self._thread_id,
            )
        _log.info(
            "session %s: codex thread %s (%s) started%s",
            session_id,
            self._thread_id,
            self._model or "default model",
            f" from {len(history)} history items" if history else "",
        )

    def _copy_home_files(self) -> None:
        assert self._codex_home is not None
        source = self.settings.resolved_home_from()
        try:
            if source.resolve() == self._codex_home.resolve():
                return
        except OSError:
            return
        for name in HOME_FILES:
            path = source / name
            if path.is_file():
                shutil.copy2(path, self._codex_home / name)  # keeps auth.json's 0600

    def _check_resumed_history(self, expected: int) -> None:
        assert self._rollout is not None
        kept = sum(1 for turn, _ in self._rollout.read() if turn is None)
        if kept and kept < expected:
            _log.warning("session %s: codex kept %d of %d history items on resume", self._session_id, kept, expected)

    async def _spawn(self) -> None:
        assert self._workspace is not None and self._codex_home is not None
        args = [self.settings.bin, "app-server"]
        overrides = list(BASE_CONFIG)
        if self.settings.model:
            overrides.append(f"model={json.dumps(self.settings.model)}")
        overrides.extend(self.settings.config)
        for override in overrides:
            args += ["-c", override]
        env = {**os.environ, "CODEX_HOME": str(self._codex_home)}
        try:
            # Its own process group: a Ctrl-C meant for the worker (which drains) must not
            # kill the session's Codex, and close() can kill what Codex left running.
            self._proc = await _Process.spawn(args, cwd=self._workspace, env=env)
        except OSError as error:
            raise CodexError(f"could not run {self.settings.bin!r} app-server: {error}") from error
        self._reader = asyncio.create_task(self._read_stdout(), name=f"codex stdout {self._session_id}")
        self._stderr_reader = asyncio.create_task(self._read_stderr(), name=f"codex stderr {self._session_id}")

    async def close(self) -> None:
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        try:
            turn = self._turn
            if turn is not None and turn.interrupt_reason is None:
                turn.interrupt_reason = "runtime closed"
            proc = self._proc
            if proc is not None and proc.returncode is None:
                assert proc.stdin is not None
                proc.stdin.close()
                try:
                    async with asyncio.timeout(EXIT_GRACE_S):
                        await proc.wait()
                except TimeoutError:
                    _log.warning("session %s: codex app-server did not exit; killing it", self._session_id)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        proc.kill()
                    await proc.wait()
            for task in (self._reader, self._stderr_reader):
                if task is None:
                    continue
                try:
                    async with asyncio.timeout(EXIT_GRACE_S):
                        await asyncio.shield(task)
                except TimeoutError:  # a grandchild still holds the pipe open
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        finally:
            self._close_done.set()

    # -- JSON-RPC ---------------------------------------------------------------------------------

    def _write(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or self._exit_code is not None or proc.stdin.is_closing():
            raise CodexExited(self._exit_message())
        proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def _send(self, message: dict[str, Any]) -> None:
        self._write(message)
        assert self._proc is not None and self._proc.stdin is not None
        try:
            await self._proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as error:
            await self._await_exit()
            raise CodexExited(self._exit_message()) from error

    async def _await_exit(self) -> None:
        """The process is going away: give the stdout reader a moment to record its exit code
        and last stderr lines, so the error says why."""
        reader = self._reader
        if reader is None or reader.done() or reader is asyncio.current_task():
            return
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(reader)
        except (TimeoutError, asyncio.CancelledError):
            pass

    def _notify(self, method: str) -> None:
        self._write({"method": method})

    async def _request(self, method: str, params: dict[str, Any]) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                await self._send({"id": request_id, "method": method, "params": params})
                reply = await future
        except TimeoutError:
            raise CodexError(f"{method} got no answer within {self.settings.request_timeout_s:g}s") from None
        finally:
            self._pending.pop(request_id, None)
        if "error" in reply:
            error = reply["error"] or {}
            raise CodexRpcError(method, error.get("code"), str(error.get("message", error)))
        return reply.get("result")

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # a line over STREAM_LIMIT: nothing we can route
                    _log.error(
                        "session %s: codex sent a message over %d bytes; dropped it", self._session_id, STREAM_LIMIT
                    )
                    continue
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    _log.debug("session %s: codex stdout: %s", self._session_id, line[:500])
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)
        finally:
            await self._on_exit()

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        stderr = self._proc.stderr
        while True:
            try:
                line = await stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self._stderr_tail.append(text)
            _log.debug("session %s: codex: %s", self._session_id, text)

    async def _on_exit(self) -> None:
        assert self._proc is not None
        try:
            self._exit_code = await self._proc.wait()
        except asyncio.CancelledError:
            self._exit_code = self._proc.returncode if self._proc.returncode is not None else -1
            raise
        finally:
            if self._stderr_reader is not None and not self._stderr_reader.done():
                try:  # the last stderr lines say why it exited
                    async with asyncio.timeout(0.5):
                        await asyncio.shield(self._stderr_reader)
                except (TimeoutError, asyncio.CancelledError):
                    pass  # close() gave up on the pipes; the cleanup below must still run
            if self._exit_code is None:
                self._exit_code = -1
            log = _log.debug if self._closed else _log.warning
            log("session %s: %s", self._session_id, self._exit_message())
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CodexExited(self._exit_message()))
            if self._turn is not None:
                self._turn.queue.put_nowait(_EXITED)

    def _exit_message(self) -> str:
        if self._exit_code is None:
            return "codex app-server is not running"
        tail = " | ".join(line for line in self._stderr_tail if line.strip())[-2000:]
        return f"codex app-server exited (code {self._exit_code})" + (f": {tail}" if tail else "")

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" not in message:
            future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(message)
            return
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        thread_id = params.get("threadId")
        if thread_id and self._thread_id and thread_id != self._thread_id:
            if "id" in message:
                self._reject(message, f"tether: {message['method']} is not for this session's thread")
            return
        if self._turn is not None:
            self._turn.queue.put_nowait(message)
        elif "id" in message:
            self._reject(message, f"tether: no turn is running to take {message['method']}")
        elif message["method"] not in _DROPPED_NOTIFICATIONS:
            _log.debug(
                "session %s: codex %s outside a turn: %s", self._session_id, message["method"], json.dumps(params)[:500]
            )

    def _reject(self, message: dict[str, Any], text: str) -> None:
        """Answer a server request with a JSON-RPC error, so Codex never waits on it."""
        try:
            self._write({"id": message["id"], "error": {"code": -32601, "message": text}})
        except CodexExited:
            pass

    # -- turns ------------------------------------------------------------------------------------

    async def run_turn(self, turn_id: str, input: str) -> AsyncIterator[RuntimeEvent]:
        if not self._thread_id or self._closed:
            yield TurnFailed("codex runtime is not started")
            return
        if self._turn is not None:
            yield TurnFailed("another turn is already running in this session")
            return
        if self._exit_code is not None:
            yield TurnFailed(self._exit_message())
            return
        turn = _Turn(turn_id)
        self._turn = turn
        terminal: RuntimeEvent | None = None
        try:
            try:
                result = await self._request(
                    "turn/start",
                    {"threadId": self._thread_id, "input": [{"type": "text", "text": input, "text_elements": []}]},
                )
                turn.codex_turn_id = str(((result or {}).get("turn") or {})["id"])
            except (CodexError, KeyError, TypeError) as error:
                self._finish_turn(turn)
                yield TurnFailed(f"codex turn/start failed: {error}")
                return
            self._codex_turns[turn.codex_turn_id] = turn_id
            if turn.interrupt_reason is not None:
                await self._send_interrupt(turn)
            while terminal is None:
                message = await self._next_message(turn)
                if message is None:  # Codex never confirmed the interrupt
                    _log.warning(
                        "session %s: codex did not end turn %s within %gs of turn/interrupt",
                        self._session_id,
                        turn.codex_turn_id,
                        INTERRUPT_GRACE_S,
                    )
                    terminal = TurnInterrupted(turn.interrupt_reason or "interrupted")
                elif message is _EXITED:
                    terminal = (
                        TurnInterrupted(turn.interrupt_reason)
                        if self._closed and turn.interrupt_reason
                        else TurnFailed(self._exit_message())
                    )
                elif message is _WAKE:
                    continue
                else:
                    for event in self._events_for(turn, message):
                        if isinstance(event, (TurnCompleted, TurnFailed, TurnInterrupted)):
                            terminal = event
                        else:
                            yield event
            for item in await self._collect_history(turn):
                yield HistoryAppended(item)
            # Released before the terminal event, so a consumer that stops at it leaves the
            # runtime ready for the next turn.
            self._finish_turn(turn)
            yield terminal
        finally:
            if not turn.finished.is_set():
                if turn.codex_turn_id and self._exit_code is None:
                    # The consumer went away mid-turn: stop Codex's turn too, without waiting.
                    try:
                        self._write(
                            {
                                "id": next(self._ids),
                                "method": "turn/interrupt",
                                "params": {"threadId": self._thread_id, "turnId": turn.codex_turn_id},
                            }
                        )
                    except CodexExited:
                        pass
                self._finish_turn(turn)

    def _finish_turn(self, turn: _Turn) -> None:
        for request_id in turn.request_ids:  # their answers have nowhere to go now
            self._requests.pop(request_id, None)
        turn.request_ids.clear()
        if self._turn is turn:
            self._turn = None
        turn.finished.set()

    async def _next_message(self, turn: _Turn) -> Any:
        if turn.interrupt_deadline is None:
            return await turn.queue.get()
        try:
            async with asyncio.timeout_at(turn.interrupt_deadline):
                return await turn.queue.get()
        except TimeoutError:
            return None

    def _events_for(self, turn: _Turn, message: dict[str, Any]) -> Iterable[RuntimeEvent]:
        method = str(message["method"])
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        message_turn = params.get("turnId")
        if message_turn and message_turn != turn.codex_turn_id:
            if "id" in message:
                self._reject(message, f"tether: {method} is not for the running turn")
            return
        if "id" in message:
            yield from self._server_request(turn, method, message["id"], params)
            return
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
            yield AgentError(
                _error_text(error), bool(params.get("willRetry")), _error_code(error.get("codexErrorInfo"))
            )
        elif method == "serverRequest/resolved":
            self._forget_codex_request(turn, params.get("requestId"))
            yield RawEvent(method, json.dumps(params))
        elif method == "turn/completed":
            codex_turn = params.get("turn") or {}
            if codex_turn.get("id") != turn.codex_turn_id:
                return
            yield self._terminal_for(turn, codex_turn)
        elif method not in _DROPPED_NOTIFICATIONS:
            yield RawEvent(method, json.dumps(params))

    def _terminal_for(self, turn: _Turn, codex_turn: dict[str, Any]) -> RuntimeEvent:
        status = codex_turn.get("status")
        if status == "completed":
            return TurnCompleted()
        if status == "interrupted":
            return TurnInterrupted(turn.interrupt_reason or "interrupted")
        error = codex_turn.get("error") or {}
        message = _error_text(error) or turn.last_error or f"codex turn ended with status {status!r}"
        code = _error_code(error.get("codexErrorInfo"))
        return TurnFailed(f"{message} ({code})" if code else message)

    def _server_request(
        self, turn: _Turn, method: str, rpc_id: int | str, params: dict[str, Any]
    ) -> Iterable[RuntimeEvent]:
        item_id = str(params.get("itemId", ""))
        if method == "item/commandExecution/requestApproval":
            kind = RequestKind.COMMAND_APPROVAL
            summary = " — ".join(str(p) for p in (params.get("command"), params.get("reason")) if p)
            decisions = _decisions(params)
        elif method == "item/fileChange/requestApproval":
            kind = RequestKind.FILE_CHANGE_APPROVAL
            parts = []
            if turn.file_paths.get(item_id):
                parts.append("change " + ", ".join(turn.file_paths[item_id]))
            if params.get("reason"):
                parts.append(str(params["reason"]))
            if params.get("grantRoot"):
                parts.append(f"write access to {params['grantRoot']}")
            summary = "; ".join(parts) or "apply a file change"
            decisions = _decisions(params)
        elif method == "item/tool/requestUserInput":
            kind = RequestKind.USER_INPUT
            summary = "\n".join(
                str(q.get("question") or q.get("header") or "")
                for q in params.get("questions") or []
                if isinstance(q, dict)
            )
            decisions = ()
        else:
            self._reject({"id": rpc_id}, f"tether does not support {method}")
            yield RawEvent(method, json.dumps({"unsupported_server_request": True, "params": params}))
            return
        request_id = new_request_id()
        self._requests[request_id] = (rpc_id, turn)
        turn.request_ids.add(request_id)
        yield RequestOpened(
            request_id=request_id,
            kind=kind,
            method=method,
            params_json=json.dumps(params),
            summary=summary,
            item_id=item_id,
            available_decisions=decisions,
        )

    def _forget_codex_request(self, turn: _Turn, rpc_id: Any) -> None:
        for request_id in list(turn.request_ids):
            entry = self._requests.get(request_id)
            if entry is not None and entry[0] == rpc_id:
                del self._requests[request_id]
                turn.request_ids.discard(request_id)

    async def respond(self, request_id: str, answer: dict[str, Any]) -> bool:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return False
        rpc_id, turn = entry
        turn.request_ids.discard(request_id)
        try:
            await self._send({"id": rpc_id, "result": answer})
        except CodexExited:
            return False
        return True

    async def interrupt(self, reason: str) -> None:
        turn = self._turn
        if turn is None or turn.finished.is_set():
            return
        if turn.interrupt_reason is None:
            turn.interrupt_reason = reason
        if turn.codex_turn_id is not None:  # else run_turn sends it once turn/start answers
            await self._send_interrupt(turn)
        # Return once the turn is over, so "interrupted" means stopped; bounded by the grace.
        try:
            async with asyncio.timeout(INTERRUPT_GRACE_S + 1.0):
                await turn.finished.wait()
        except TimeoutError:
            pass

    async def _send_interrupt(self, turn: _Turn) -> None:
        if turn.interrupt_sent:
            return
        turn.interrupt_sent = True
        turn.interrupt_deadline = asyncio.get_running_loop().time() + INTERRUPT_GRACE_S
        turn.queue.put_nowait(_WAKE)
        try:
            await self._request("turn/interrupt", {"threadId": self._thread_id, "turnId": turn.codex_turn_id})
        except CodexError as error:
            # Typically the turn ended meanwhile; its turn/completed (or the exit) ends it.
            _log.info("session %s: turn/interrupt: %s", self._session_id, error)

    async def _collect_history(self, turn: _Turn) -> list[HistoryItem]:
        """The model-visible items the turn added, read from the rollout file."""
        rollout = self._rollout
        if rollout is None:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROLLOUT_FLUSH_WAIT_S
        collected: list[HistoryItem] = []
        while True:
            for codex_turn, raw in rollout.read():
                if codex_turn is None or not _is_model_visible(raw):
                    continue
                raw.pop("internal_chat_message_metadata_passthrough", None)
                collected.append(raw_to_history(raw, self._codex_turns.get(codex_turn, turn.turn_id)))
            if turn.codex_turn_id in rollout.ended or self._exit_code is not None:
                break
            if loop.time() >= deadline:
                _log.warning(
                    "session %s: no end of turn %s in %s after %gs; history may miss items",
                    self._session_id,
                    turn.codex_turn_id,
                    rollout.path,
                    ROLLOUT_FLUSH_WAIT_S,
                )
                break
            await asyncio.sleep(_ROLLOUT_POLL_S)
        self._history.extend(collected)
        return collected


def _version_from_user_agent(user_agent: str) -> str:
    """ "tether/0.169.0 (Debian 12.0.0; x86_64) ..." -> "0.169.0"."""
    product = user_agent.split(" ", 1)[0]
    return product.split("/", 1)[1] if "/" in product else ""


__all__ = [
    "CodexError",
    "CodexExited",
    "CodexRpcError",
    "CodexRuntime",
    "CodexSettings",
]
