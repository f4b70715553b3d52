"""The Codex runtime: each session drives its own `codex app-server` process over stdio.

One process per session, spawned by `start()` in the session's workspace with a CODEX_HOME of
its own (`<session>/codex-home`, into which a logged-in user's `auth.json` and `config.toml`
are copied). The parts: `_codex_settings` (how app-server runs), `_codex_process` (the child
process), `_codex_rpc` (JSON-RPC over its stdio), `_codex_events` (notifications to runtime
events), `_codex_approvals` (server requests as pending requests) and `_codex_rollout` (the
model-visible history, read from the thread's rollout file). This module owns the lifecycle
and the turn loop.

Rehydration hands the history back verbatim through `thread/resume` with `history` (an
experimental field; Codex then makes a new thread id) and fails closed: a session with history
never silently continues on an empty thread.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from tether.execution_worker._codex_approvals import Approvals, answer_problem
from tether.execution_worker._codex_errors import CodexError, CodexExited, CodexRpcError
from tether.execution_worker._codex_events import (
    DROPPED_NOTIFICATIONS,
    CodexTurn,
    announces_turn_end,
    notification_events,
)
from tether.execution_worker._codex_process import CodexProcess
from tether.execution_worker._codex_rollout import Rollout, history_to_raw, is_model_visible, raw_to_history
from tether.execution_worker._codex_rpc import CodexRpc, Message
from tether.execution_worker._codex_settings import (
    APPROVAL_POLICIES,
    HOME_FILES,
    SANDBOX_MODES,
    CodexSettings,
    absolute_path,
)
from tether.execution_worker.runtime import (
    AgentError,
    HistoryAppended,
    HistoryItem,
    ItemDelta,
    RawEvent,
    Runtime,
    RuntimeEvent,
    TokenUsage,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    session_workspace,
)

_log = logging.getLogger(__name__)

#: How long `close()` waits for app-server to exit once its stdin is closed.
EXIT_GRACE_S = 2.0
#: How long a turn waits for `turn/completed` after `turn/interrupt` before giving up on it.
INTERRUPT_GRACE_S = 10.0
#: How long, after `turn/completed`, to wait for the turn's end marker in the rollout file.
ROLLOUT_FLUSH_WAIT_S = 2.0
#: Polling for that marker starts at the first interval and doubles up to the second.
_ROLLOUT_POLL_FIRST_S = 0.001
_ROLLOUT_POLL_S = 0.02
#: How long the thread's going idle, which Codex sends just before the turn's `turn/completed`,
#: is held for the next message, so that it leaves with the turn's end: one message to the
#: control plane (one commit, one push to subscribers) on the turn's critical path, not two.
END_HOLD_S = 0.05

_EXITED = object()  # queued to the running turn when app-server is gone
_WAKE = object()  # queued to the running turn when an interrupt asks it to watch the clock
_HOLD_OVER = object()  # what _next_message returns when the hold ends before a message comes


def _tether_version() -> str:
    try:
        return importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class CodexRuntime(Runtime):
    """Runs a session's turns in its own `codex app-server` process."""

    def __init__(self, settings: CodexSettings | None = None) -> None:
        self.settings = settings if settings is not None else CodexSettings()
        self._session_id = ""
        self._workspace: Path | None = None
        self._codex_home: Path | None = None
        self._rpc: CodexRpc | None = None
        self._thread_id = ""
        self._thread: dict[str, Any] = {}
        self._model = ""
        self._codex_version = ""
        self._rollout: Rollout | None = None
        # Codex turn id -> tether turn id, for rollout lines read after their turn; pruned
        # each time a turn's end is read (see Rollout.take_end).
        self._codex_turns: dict[str, str] = {}
        self._history: list[HistoryItem] = []
        self._turn: CodexTurn | None = None
        self._approvals = Approvals()
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
        return self._rpc.proc.pid if self._rpc is not None and self._rpc.running else None

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

    def workspace_dir(self, session_id: str, workdir: Path) -> Path | None:
        # The session's files; its CODEX_HOME (`codex-home`, beside it) is Codex's own state,
        # rebuilt from the history on another worker.
        return session_workspace(absolute_path(workdir), session_id) / "workspace"

    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        if self._started or self._closed:
            raise CodexError("the codex runtime was already started")
        self._started = True
        # Absolute: app-server runs in the workspace, where a relative CODEX_HOME means another place.
        base = session_workspace(absolute_path(workdir), session_id)
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
            rpc = await self._spawn()
            init = await rpc.request(
                "initialize",
                {
                    "clientInfo": {"name": "tether", "title": None, "version": _tether_version()},
                    "capabilities": {"experimentalApi": True},
                },
            )
            rpc.notify("initialized")
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
                result = await rpc.request("thread/resume", params)
            else:
                result = await rpc.request("thread/start", params)
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
            self._rollout = Rollout(Path(thread["path"]))
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

    async def _spawn(self) -> CodexRpc:
        assert self._workspace is not None and self._codex_home is not None
        env = {**os.environ, "CODEX_HOME": str(self._codex_home)}
        try:
            proc = await CodexProcess.spawn(self.settings.app_server_args(), cwd=self._workspace, env=env)
        except OSError as error:
            raise CodexError(f"could not run {self.settings.bin!r} app-server: {error}") from error
        self._rpc = CodexRpc(
            proc,
            session_id=self._session_id,
            request_timeout_s=self.settings.request_timeout_s,
            on_message=self._dispatch,
            on_exit=self._on_exit,
        )
        self._rpc.closing = self._closed
        return self._rpc

    async def close(self) -> None:
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        try:
            turn = self._turn
            if turn is not None and turn.interrupt_reason is None:
                turn.interrupt_reason = "runtime closed"
            if self._rpc is not None:
                await self._rpc.close(EXIT_GRACE_S)
        finally:
            self._close_done.set()

    # -- messages from app-server -----------------------------------------------------------------

    def _exit_message(self) -> str:
        return self._rpc.exit_message() if self._rpc is not None else "codex app-server is not running"

    def _on_exit(self) -> None:
        if self._turn is not None:
            self._turn.queue.put_nowait(_EXITED)

    def _dispatch(self, message: Message) -> None:
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
        elif message["method"] not in DROPPED_NOTIFICATIONS:
            _log.debug(
                "session %s: codex %s outside a turn: %s", self._session_id, message["method"], json.dumps(params)[:500]
            )

    def _reject(self, message: Message, text: str) -> None:
        if self._rpc is not None:
            self._rpc.reject(message, text)

    # -- turns ------------------------------------------------------------------------------------

    async def run_turn(
        self, turn_id: str, input: str, output_schema: dict[str, Any] | None = None
    ) -> AsyncIterator[RuntimeEvent]:
        rpc = self._rpc
        if not self._thread_id or self._closed or rpc is None:
            yield TurnFailed("codex runtime is not started")
            return
        if self._turn is not None:
            yield TurnFailed("another turn is already running in this session")
            return
        if not rpc.running:
            yield TurnFailed(rpc.exit_message())
            return
        turn = CodexTurn(turn_id)
        self._turn = turn
        terminal: RuntimeEvent | None = None
        try:
            try:
                params: dict[str, Any] = {
                    "threadId": self._thread_id,
                    "input": [{"type": "text", "text": input, "text_elements": []}],
                }
                if output_schema is not None:
                    params["outputSchema"] = output_schema  # Codex asks the model for a final message in it
                result = await rpc.request("turn/start", params)
                turn.codex_turn_id = str(((result or {}).get("turn") or {})["id"])
            except (CodexError, KeyError, TypeError) as error:
                self._finish_turn(turn)
                yield TurnFailed(f"codex turn/start failed: {error}")
                return
            self._codex_turns[turn.codex_turn_id] = turn_id
            if turn.interrupt_reason is not None:
                await self._send_interrupt(turn)
            # Events held back until the next message or END_HOLD_S (see announces_turn_end).
            held: list[RuntimeEvent] = []
            hold_until = 0.0
            while terminal is None:
                message = await self._next_message(turn, hold_until if held else None)
                if message is _HOLD_OVER:
                    for event in held:
                        yield event
                    held.clear()
                    continue
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
                        else TurnFailed(rpc.exit_message())
                    )
                elif message is _WAKE:
                    continue
                elif isinstance(message, AgentError):  # an answer refused by respond()
                    for event in (*held, message):
                        yield event
                    held.clear()
                else:
                    hold = announces_turn_end(message)
                    for event in self._events_for(turn, message):
                        if isinstance(event, (TurnCompleted, TurnFailed, TurnInterrupted)):
                            terminal = event
                            continue
                        for earlier in held:
                            yield earlier
                        held.clear()
                        if hold:
                            held.append(event)
                            hold_until = asyncio.get_running_loop().time() + END_HOLD_S
                            continue
                        yield event
                        if self._gives_up(turn, event):
                            await self._send_interrupt(turn)
                    if held and terminal is None and turn.queue.empty():
                        # The turn is ending: read its history while turn/completed is on its way.
                        self._read_history(turn)
            for event in held:
                yield event
            if turn.gave_up is not None and isinstance(terminal, TurnInterrupted):
                terminal = TurnFailed(turn.gave_up)
            for item in await self._collect_history(turn):
                yield HistoryAppended(item)
            # Released before the terminal event, so a consumer that stops at it leaves the
            # runtime ready for the next turn.
            self._finish_turn(turn)
            yield terminal
        finally:
            if not turn.finished.is_set():
                if turn.codex_turn_id and rpc.running:
                    # The consumer went away mid-turn: stop Codex's turn too, without waiting.
                    rpc.request_nowait("turn/interrupt", {"threadId": self._thread_id, "turnId": turn.codex_turn_id})
                self._finish_turn(turn)

    def _gives_up(self, turn: CodexTurn, event: RuntimeEvent) -> bool:
        """Whether the runtime gives up on `turn` now: Codex announced one reconnect more than
        `max_reconnects` with no answer from the model in between (it never stops by itself)."""
        if isinstance(event, (ItemDelta, TokenUsage)):
            turn.reconnects = 0  # the model answers
            return False
        if not isinstance(event, AgentError) or not event.will_retry:
            return False
        turn.reconnects += 1
        if turn.reconnects <= self.settings.max_reconnects or turn.interrupt_reason is not None:
            return False
        turn.gave_up = turn.interrupt_reason = (
            f"the model provider stayed unreachable: gave up after {self.settings.max_reconnects} reconnects "
            f"(last error: {event.message})"
        )
        _log.warning("session %s: turn %s: %s", self._session_id, turn.turn_id, turn.gave_up)
        return True

    def _finish_turn(self, turn: CodexTurn) -> None:
        self._approvals.end_turn(turn)
        if self._turn is turn:
            self._turn = None
        turn.finished.set()

    async def _next_message(self, turn: CodexTurn, hold_until: float | None = None) -> Any:
        """The next message for `turn`; None once the interrupt's grace is over, _HOLD_OVER
        once `hold_until` (a loop time) passes first."""
        deadline, expired = turn.interrupt_deadline, None
        if hold_until is not None and (deadline is None or hold_until < deadline):
            deadline, expired = hold_until, _HOLD_OVER
        if deadline is None:
            return await turn.queue.get()
        try:
            async with asyncio.timeout_at(deadline):
                return await turn.queue.get()
        except TimeoutError:
            return expired

    def _events_for(self, turn: CodexTurn, message: Message) -> Iterable[RuntimeEvent]:
        method = str(message["method"])
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        message_turn = params.get("turnId")
        if message_turn and message_turn != turn.codex_turn_id:
            if "id" in message:
                self._reject(message, f"tether: {method} is not for the running turn")
            return
        if "id" in message:
            opened = self._approvals.open(turn, method, message["id"], params)
            if opened is None:
                self._reject(message, f"tether does not support {method}")
                yield RawEvent(method, json.dumps({"unsupported_server_request": True, "params": params}))
            else:
                yield opened
            return
        if method == "serverRequest/resolved":
            self._approvals.resolved(turn, params.get("requestId"))
        yield from notification_events(turn, method, params)

    async def respond(self, request_id: str, answer: dict[str, Any]) -> bool:
        entry = self._approvals.take(request_id)
        if entry is None or self._rpc is None:
            return False
        rpc_id, turn, method = entry
        problem = answer_problem(method, answer)
        if problem is not None:
            # Codex would take it as a failed approval without a word: refuse it out loud, in
            # the worker's log and in the session's, and answer Codex with an error so the turn
            # goes on (Codex declines the action).
            text = (
                f"tether: the answer to request {request_id} ({method}) was not delivered: {problem}; Codex declines it"
            )
            _log.warning("session %s: %s; the answer was %s", self._session_id, text, json.dumps(answer)[:500])
            turn.queue.put_nowait(AgentError(text, will_retry=False, code="answerRefused"))
            self._rpc.reject({"id": rpc_id, "method": method}, text, code=-32602)  # invalid params
            return False
        try:
            await self._rpc.answer(rpc_id, answer)
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

    async def _send_interrupt(self, turn: CodexTurn) -> None:
        if turn.interrupt_sent or self._rpc is None:
            return
        turn.interrupt_sent = True
        turn.interrupt_deadline = asyncio.get_running_loop().time() + INTERRUPT_GRACE_S
        turn.queue.put_nowait(_WAKE)
        try:
            await self._rpc.request("turn/interrupt", {"threadId": self._thread_id, "turnId": turn.codex_turn_id})
        except CodexError as error:
            # Typically the turn ended meanwhile; its turn/completed (or the exit) ends it.
            _log.info("session %s: turn/interrupt: %s", self._session_id, error)

    def _read_history(self, turn: CodexTurn) -> bool:
        """Add the model-visible items the rollout file gained to `turn.history`; True once the
        turn's end marker is read (every line of this turn and of those before it is then)."""
        rollout = self._rollout
        if rollout is None or turn.history_complete:
            return turn.history_complete
        for codex_turn, raw in rollout.read():
            if codex_turn is None or not is_model_visible(raw):
                continue
            raw.pop("internal_chat_message_metadata_passthrough", None)
            turn.history.append(raw_to_history(raw, self._codex_turns.get(codex_turn, turn.turn_id)))
        if turn.codex_turn_id is not None and rollout.take_end(turn.codex_turn_id):
            self._codex_turns.clear()
            turn.history_complete = True
        return turn.history_complete

    async def _collect_history(self, turn: CodexTurn) -> list[HistoryItem]:
        """The model-visible items the turn added, read from the rollout file (what was read of
        it before the turn's end, and the rest once its end marker is there)."""
        rollout = self._rollout
        if rollout is None:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROLLOUT_FLUSH_WAIT_S
        delay = _ROLLOUT_POLL_FIRST_S
        while not self._read_history(turn):
            if self._rpc is None or not self._rpc.running:
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
            await asyncio.sleep(delay)
            delay = min(2 * delay, _ROLLOUT_POLL_S)
        self._history.extend(turn.history)
        return turn.history


def _version_from_user_agent(user_agent: str) -> str:
    """ "tether/0.169.0 (Debian 12.0.0; x86_64) ..." -> "0.169.0"."""
    product = user_agent.split(" ", 1)[0]
    return product.split("/", 1)[1] if "/" in product else ""


__all__ = [
    "APPROVAL_POLICIES",
    "SANDBOX_MODES",
    "CodexError",
    "CodexExited",
    "CodexRpcError",
    "CodexRuntime",
    "CodexSettings",
]
