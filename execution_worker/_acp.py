"""The ACP runtime: each session drives its own agent process over the Agent Client Protocol.

One agent process per session (the worker's `--acp-command`), spawned by `start()` in the
session's workspace; the worker is the ACP client. The parts: `_acp_settings` (how the agent
runs), `_acp_rpc` (the protocol's wire), `_acp_events` (`session/update` to runtime events),
`_acp_permissions` (`session/request_permission` as pending requests), `_acp_files` (the
client-side `fs/*` and `terminal/*` methods, confined to the workspace), `_acp_state` (the agent's
state directory carried in snapshots) and `_acp_check` (the probe at worker start, which decides
the runtime's portability). This module owns the lifecycle and the turn loop.

How a session moves depends on the agent, and the factory declares it once probed:
`Portability.STATE` when the agent offers `session/load` and its state directory is carried
(`--acp-state-dir-env`): a worker taking the session over writes the state back and loads the
session; `Portability.NONE` otherwise, and `start()` with history then raises with the reason,
never continuing on an empty session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tether.execution_worker._acp_events import AcpTurn, finish_text, finish_tool_calls, update_events
from tether.execution_worker._acp_files import Terminals, WorkspaceFiles
from tether.execution_worker._acp_permissions import METHOD as PERMISSION_METHOD
from tether.execution_worker._acp_permissions import Permissions
from tether.execution_worker._acp_rpc import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    AcpConnection,
    AcpError,
    AcpExited,
    AcpRpcError,
    initialize_params,
    spawn_agent,
)
from tether.execution_worker._acp_settings import AcpSettings
from tether.execution_worker._acp_state import StateError, pack_state, unpack_state
from tether.execution_worker._codex_settings import absolute_path
from tether.execution_worker.runtime import (
    HistoryAppended,
    HistoryItem,
    HistoryRole,
    Portability,
    Runtime,
    RuntimeEvent,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    session_workspace,
)

_log = logging.getLogger(__name__)

#: How long `close()` waits for the agent to exit once its stdin is closed.
EXIT_GRACE_S = 2.0
#: How long a turn waits for `session/prompt` to answer after `session/cancel`.
INTERRUPT_GRACE_S = 10.0

_EXITED = object()  # queued to the running turn when the agent is gone
_PROMPT_DONE = object()  # queued once `session/prompt` answered
_WAKE = object()  # queued to the running turn so that it starts watching the interrupt's clock
#: `session/prompt` stop reasons that fail the turn, with what they mean.
_FAILED_STOPS = {
    "max_tokens": "the agent stopped: the model reached its token limit",
    "max_turn_requests": "the agent stopped: it reached its limit of model requests in one turn",
    "refusal": "the agent refused to go on",
}


class AcpRuntime(Runtime):
    """Runs a session's turns in its own ACP agent process."""

    def __init__(
        self,
        settings: AcpSettings,
        portability: Portability = Portability.NONE,
        portability_reason: str = "the agent was not probed",
    ) -> None:
        self.settings = settings
        self.portability = portability
        self.portability_reason = portability_reason
        self._session_id = ""
        self._workspace: Path | None = None
        self._state_dir: Path | None = None
        self._conn: AcpConnection | None = None
        self._acp_session_id = ""
        self._agent_info: dict[str, Any] = {}
        self._restored: dict[str, Any] | None = None
        self._history: list[HistoryItem] = []
        self._turn: AcpTurn | None = None
        self._permissions = Permissions()
        self._files: WorkspaceFiles | None = None
        self._terminals: Terminals | None = None
        self._started = False
        self._closed = False
        self._close_done = asyncio.Event()

    # -- properties -------------------------------------------------------------------------------

    @property
    def workspace(self) -> Path | None:
        return self._workspace

    @property
    def state_dir(self) -> Path | None:
        return self._state_dir

    @property
    def pid(self) -> int | None:
        return self._conn.proc.pid if self._conn is not None and self._conn.running else None

    @property
    def runtime_thread_id(self) -> str:
        return self._acp_session_id

    def runtime_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "runtime": "acp",
            "agent": self._agent_info,
            "acp_session_id": self._acp_session_id,
            "portability": self.portability.value,
        }
        if self._state_dir is not None and self.portability is Portability.STATE:
            metadata["state"] = pack_state(self.settings, self._state_dir)
            if "error" in metadata["state"]:
                _log.warning("session %s: cannot move: %s", self._session_id, metadata["state"]["error"])
        return metadata

    def export_history(self) -> list[HistoryItem]:
        return list(self._history)

    def restore_state(self, state: dict[str, Any]) -> None:
        if self.portability is not Portability.STATE:
            raise AcpError(f"the acp agent's sessions cannot move: {self.portability_reason}")
        if state:
            if not state.get("acp_session_id"):
                raise AcpError("the snapshot names no acp session to load")
            packed = state.get("state")
            if isinstance(packed, dict) and "error" in packed:
                raise AcpError(f"the agent's state was not carried: {packed['error']}")
        self._restored = dict(state)

    # -- lifecycle --------------------------------------------------------------------------------

    def workspace_dir(self, session_id: str, workdir: Path) -> Path | None:
        # The session's files; its state directory (beside it) moves in the snapshot metadata.
        return session_workspace(absolute_path(workdir), session_id) / "workspace"

    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        if self._started or self._closed:
            raise AcpError("the acp runtime was already started")
        self._started = True
        base = session_workspace(absolute_path(workdir), session_id)
        self._session_id = session_id
        self._workspace = base / "workspace"
        load_id = self._session_to_load(history)
        self._workspace.mkdir(parents=True, exist_ok=True)
        if self.settings.state_dir_env:
            self._state_dir = base / "acp-state"
            self._prepare_state_dir()
        env = {**os.environ, **self.settings.env}
        if self._state_dir is not None and self.settings.state_dir_env:
            env[self.settings.state_dir_env] = str(self._state_dir)
        self._files = WorkspaceFiles(self._workspace)
        self._terminals = Terminals(self._workspace, {**os.environ, **self.settings.env})
        try:
            self._conn = await spawn_agent(
                self.settings.command,
                cwd=self._workspace,
                env=env,
                name=f"session {session_id}",
                request_timeout_s=self.settings.request_timeout_s,
                on_notification=self._on_notification,
                on_request=self._on_request,
                on_exit=self._on_exit,
            )
            init = await self._conn.request("initialize", initialize_params()) or {}
            self._agent_info = dict(init.get("agentInfo") or {})
            params = {"cwd": str(self._workspace), "mcpServers": []}
            if load_id:
                if not (init.get("agentCapabilities") or {}).get("loadSession"):
                    raise AcpError("the agent no longer offers session/load")
                await self._conn.request("session/load", {"sessionId": load_id, **params})
                self._acp_session_id = load_id
            else:
                result = await self._conn.request("session/new", params) or {}
                self._acp_session_id = str(result.get("sessionId") or "")
                if not self._acp_session_id:
                    raise AcpError("session/new returned no session id")
        except BaseException as error:
            await self.close()
            if isinstance(error, AcpError):
                what = f"loading acp session {load_id}" if load_id else "starting the acp session"
                raise AcpError(f"{what} failed: {error}") from error
            raise
        self._history = list(history)
        _log.info(
            "session %s: acp agent %s session %s %s",
            session_id,
            self._agent_info.get("name") or self.settings.shown(),
            self._acp_session_id,
            f"loaded ({len(history)} history items)" if load_id else "started",
        )

    def _session_to_load(self, history: list[HistoryItem]) -> str:
        """The agent's session id to load, "" for a fresh session; raises when the session has
        history this runtime cannot continue (never runs on an empty one)."""
        restored = self._restored or {}
        if not history and not restored:
            return ""
        if self.portability is not Portability.STATE:
            raise AcpError(
                f"this session has {len(history)} history items, which the acp agent cannot continue "
                f"on this worker: {self.portability_reason} (portability none)"
            )
        load_id = str(restored.get("acp_session_id") or "")
        if not load_id:
            raise AcpError(
                f"this session has {len(history)} history items but no snapshot with the agent's state "
                "to load it from; refusing to start it empty"
            )
        return load_id

    def _prepare_state_dir(self) -> None:
        state_dir = self._state_dir
        assert state_dir is not None
        if self._restored:
            # What an earlier stay on this worker left may be older than the snapshot.
            shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        if self._restored:
            try:
                count = unpack_state(self.settings, self._restored.get("state"), state_dir)
            except StateError as error:
                raise AcpError(str(error)) from None
            _log.info("session %s: wrote back %d agent state files", self._session_id, count)
        seed = self.settings.state_seed
        if seed is not None and seed.is_dir():
            for path in seed.iterdir():
                if path.is_file() and not (state_dir / path.name).exists():
                    shutil.copy2(path, state_dir / path.name)

    async def close(self) -> None:
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        try:
            turn = self._turn
            if turn is not None and turn.interrupt_reason is None:
                turn.interrupt_reason = "runtime closed"
            if turn is not None:
                self._permissions.end_turn(turn)
            if self._conn is not None:
                await self._conn.close(EXIT_GRACE_S)
            if self._terminals is not None:
                await self._terminals.close()
        finally:
            self._close_done.set()

    # -- messages from the agent ------------------------------------------------------------------

    def _on_exit(self) -> None:
        if self._turn is not None:
            self._turn.queue.put_nowait(_EXITED)

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        update = params.get("update")
        turn = self._turn
        if method != "session/update" or not isinstance(update, dict):
            _log.debug("session %s: acp %s ignored", self._session_id, method)
        elif params.get("sessionId") != self._acp_session_id or turn is None:
            # session/load replays the conversation before any turn runs: nothing new.
            _log.debug("session %s: acp update outside a turn: %s", self._session_id, json.dumps(update)[:300])
        else:
            turn.queue.put_nowait(update)

    async def _on_request(self, method: str, params: dict[str, Any]) -> Any:
        if params.get("sessionId") != self._acp_session_id:
            raise AcpRpcError(method, INVALID_PARAMS, "tether: not this session's id")
        files, terminals = self._files, self._terminals
        assert files is not None and terminals is not None
        if method == PERMISSION_METHOD:
            return await self._permissions.ask(self._turn, params)
        if method == "fs/read_text_file":
            return await asyncio.to_thread(files.read_text_file, params)
        if method == "fs/write_text_file":
            return await asyncio.to_thread(files.write_text_file, params)
        if method == "terminal/create":
            return await terminals.create(params)
        if method == "terminal/output":
            return terminals.output(params)
        if method == "terminal/wait_for_exit":
            return await terminals.wait_for_exit(params)
        if method == "terminal/kill":
            return terminals.kill(params)
        if method == "terminal/release":
            return await terminals.release(params)
        raise AcpRpcError(method, METHOD_NOT_FOUND, f"tether does not serve {method}")

    # -- turns ------------------------------------------------------------------------------------

    async def run_turn(self, turn_id: str, input: str) -> AsyncIterator[RuntimeEvent]:
        conn = self._conn
        if not self._acp_session_id or self._closed or conn is None:
            yield TurnFailed("the acp runtime is not started")
            return
        if self._turn is not None:
            yield TurnFailed("another turn is already running in this session")
            return
        if not conn.running:
            yield TurnFailed(conn.exit_message())
            return
        turn = AcpTurn(turn_id)
        self._turn = turn
        prompt = asyncio.create_task(
            conn.request(
                "session/prompt",
                {"sessionId": self._acp_session_id, "prompt": [{"type": "text", "text": input}]},
                timeout_s=None,  # the worker's turn timeout interrupts a turn that runs too long
            ),
            name=f"acp prompt {turn_id}",
        )
        prompt.add_done_callback(lambda _: turn.queue.put_nowait(_PROMPT_DONE))
        terminal: RuntimeEvent | None = None
        try:
            while terminal is None:
                message = await self._next_message(turn)
                if message is None:
                    _log.warning(
                        "session %s: the acp agent did not end turn %s within %gs of session/cancel",
                        self._session_id,
                        turn_id,
                        INTERRUPT_GRACE_S,
                    )
                    terminal = TurnInterrupted(turn.interrupt_reason or "interrupted")
                elif message is _PROMPT_DONE:
                    terminal = self._prompt_outcome(turn, prompt)
                elif message is _EXITED or message is _WAKE:
                    continue  # an exit ends the turn through the prompt's AcpExited
                elif isinstance(message, dict):
                    for event in update_events(turn, message, self._terminal_output):
                        yield event
                else:  # a RequestOpened
                    yield message
            for event in (*finish_text(turn), *finish_tool_calls(turn)):
                yield event
            for item in self._turn_history(turn, input):
                yield HistoryAppended(item)
            # Released before the terminal event, so a consumer that stops at it leaves the
            # runtime ready for the next turn.
            self._finish_turn(turn)
            yield terminal
        finally:
            if not prompt.done():
                # The consumer went away mid-turn: stop the agent's turn too, without waiting.
                conn.notify("session/cancel", {"sessionId": self._acp_session_id})
                prompt.cancel()
            if not turn.finished.is_set():
                self._finish_turn(turn)

    def _terminal_output(self, terminal_id: str) -> str | None:
        return self._terminals.text_of(terminal_id) if self._terminals is not None else None

    def _prompt_outcome(self, turn: AcpTurn, prompt: asyncio.Task[Any]) -> RuntimeEvent:
        if prompt.cancelled():
            return TurnInterrupted(turn.interrupt_reason or "interrupted")
        error = prompt.exception()
        if isinstance(error, AcpExited):
            if self._closed and turn.interrupt_reason:
                return TurnInterrupted(turn.interrupt_reason)
            return TurnFailed(str(error))
        if isinstance(error, AcpRpcError):
            if turn.interrupt_reason is not None:
                return TurnInterrupted(turn.interrupt_reason)
            return TurnFailed(f"the acp agent failed the turn: {error}")
        if error is not None:
            return TurnFailed(f"the acp agent failed the turn: {error}")
        result = prompt.result() or {}
        stop = str(result.get("stopReason") or "")
        if stop == "cancelled" or turn.interrupt_reason is not None:
            return TurnInterrupted(turn.interrupt_reason or "the agent cancelled the turn")
        if stop in _FAILED_STOPS:
            return TurnFailed(f"{_FAILED_STOPS[stop]} (stopReason {stop})")
        return TurnCompleted()

    def _turn_history(self, turn: AcpTurn, input: str) -> list[HistoryItem]:
        items = [HistoryItem(HistoryRole.INPUT, input, turn.turn_id)]
        items += [HistoryItem(HistoryRole.OUTPUT, text, turn.turn_id) for text in turn.agent_messages if text]
        self._history.extend(items)
        return items

    def _finish_turn(self, turn: AcpTurn) -> None:
        self._permissions.end_turn(turn)
        if self._turn is turn:
            self._turn = None
        turn.finished.set()

    async def _next_message(self, turn: AcpTurn) -> Any:
        if turn.interrupt_deadline is None:
            return await turn.queue.get()
        try:
            async with asyncio.timeout_at(turn.interrupt_deadline):
                return await turn.queue.get()
        except TimeoutError:
            return None

    async def respond(self, request_id: str, answer: dict[str, Any]) -> bool:
        delivered, problem = self._permissions.answer(request_id, answer)
        if problem is not None:
            _log.warning(
                "session %s: the answer to request %s was not delivered: %s; the answer was %s",
                self._session_id,
                request_id,
                problem,
                json.dumps(answer)[:500],
            )
        return delivered

    async def interrupt(self, reason: str) -> None:
        turn = self._turn
        if turn is None or turn.finished.is_set():
            return
        if turn.interrupt_reason is None:
            turn.interrupt_reason = reason
        if turn.interrupt_deadline is None:
            turn.interrupt_deadline = asyncio.get_running_loop().time() + INTERRUPT_GRACE_S
            # ACP: a client cancelling a turn answers the permission requests it left open.
            self._permissions.end_turn(turn)
            if self._conn is not None:
                self._conn.notify("session/cancel", {"sessionId": self._acp_session_id})
            turn.queue.put_nowait(_WAKE)
        try:
            async with asyncio.timeout(INTERRUPT_GRACE_S + 1.0):
                await turn.finished.wait()
        except TimeoutError:
            pass


__all__ = ["AcpError", "AcpRuntime", "AcpSettings"]
