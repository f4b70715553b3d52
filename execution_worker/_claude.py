"""The Claude Code runtime: each session drives its own headless `claude -p` process over
stream-json.

One process per session, spawned by `start()` in the session's workspace with a Claude config
directory of its own (`<session>/claude-config`, into which a logged-in user's credentials and
settings are copied), telemetry, error reports, auto-update and non-essential traffic off. The
parts: `_claude_settings` (how claude runs), `_claude_protocol` (the stream-json channel),
`_claude_events` (messages to runtime events), `_claude_approvals` (permission prompts as
pending requests) and `_claude_transcript` (the model-visible history and Claude's transcript).
This module owns the lifecycle and the turn loop.

Tether's session id is Claude's session id (`claude_session_id`). Portability is HISTORY: every
message of the conversation is recorded, verbatim, as a history item; a worker that never saw
the session writes them as Claude's transcript into a fresh config directory and starts
`claude --resume`. It fails closed: when the transcript cannot be written or Claude does not
take it, `start()` raises and the turn fails with the reason; it never runs on an empty history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tether.execution_worker._claude_approvals import DECISIONS, Approvals, permission_response
from tether.execution_worker._claude_events import ClaudeTurn, Usage, message_events
from tether.execution_worker._claude_protocol import ClaudeChannel, ClaudeError, ClaudeExited, Message
from tether.execution_worker._claude_settings import CONFIG_FILES, ClaudeSettings, claude_session_id
from tether.execution_worker._claude_transcript import (
    TranscriptError,
    input_item,
    project_dir,
    write_transcript,
)
from tether.execution_worker._codex_process import CodexProcess
from tether.execution_worker._codex_settings import absolute_path
from tether.execution_worker.runtime import (
    AgentError,
    HistoryAppended,
    HistoryItem,
    Portability,
    Runtime,
    RuntimeEvent,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    session_workspace,
)

_log = logging.getLogger(__name__)

#: How long `close()` waits for claude to exit once its stdin is closed.
EXIT_GRACE_S = 2.0
#: How long a turn waits for its `result` after the `interrupt` control request before it
#: stops claude with a signal (the next turn resumes the transcript in a new process).
INTERRUPT_GRACE_S = 5.0
#: How long `claude --version` may take when a transcript is written.
VERSION_TIMEOUT_S = 10.0

_EXITED = object()  # queued to the running turn when claude is gone
_WAKE = object()  # queued to the running turn when an interrupt asks it to watch the clock


class ClaudeRuntime(Runtime):
    """Runs a session's turns in its own `claude -p` process."""

    #: Sessions move with their recorded history (see the module docstring).
    portability = Portability.HISTORY

    def __init__(self, settings: ClaudeSettings | None = None) -> None:
        self.settings = settings if settings is not None else ClaudeSettings()
        self._session_id = ""
        self._claude_session = ""
        self._workspace: Path | None = None
        self._config_dir: Path | None = None
        self._channel: ClaudeChannel | None = None
        self._model = self.settings.model or ""
        self._claude_version = ""
        self._history: list[HistoryItem] = []
        self._usage = Usage()
        self._turn: ClaudeTurn | None = None
        self._approvals = Approvals()
        # Turns abandoned mid-way whose `result` claude has yet to send (see run_turn).
        self._abandoned_results = 0
        self._started = False
        self._closed = False
        self._close_done = asyncio.Event()

    # -- properties -------------------------------------------------------------------------------

    @property
    def workspace(self) -> Path | None:
        """The directory Claude works in, once started."""
        return self._workspace

    @property
    def config_dir(self) -> Path | None:
        """The session's own CLAUDE_CONFIG_DIR, once started."""
        return self._config_dir

    @property
    def pid(self) -> int | None:
        """The claude process id, while it runs."""
        return self._channel.proc.pid if self._channel is not None and self._channel.running else None

    @property
    def runtime_thread_id(self) -> str:
        return self._claude_session

    @property
    def transcript_path(self) -> Path | None:
        """Where Claude keeps this session's transcript, once started."""
        if self._config_dir is None or self._workspace is None:
            return None
        return project_dir(self._config_dir, self._workspace) / f"{self._claude_session}.jsonl"

    def runtime_metadata(self) -> dict[str, Any]:
        return {
            "runtime": "claude",
            "claude_session_id": self._claude_session,
            "model": self._model,
            "claude_version": self._claude_version,
            "permission_mode": self.settings.permission_mode or "",
            "transcript_path": str(self.transcript_path or ""),
        }

    def export_history(self) -> list[HistoryItem]:
        return list(self._history)

    # -- lifecycle --------------------------------------------------------------------------------

    def workspace_dir(self, session_id: str, workdir: Path) -> Path | None:
        # The session's files; its config directory (beside it) is Claude's own state, rebuilt
        # from the history on another worker.
        return session_workspace(absolute_path(workdir), session_id) / "workspace"

    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        if self._started or self._closed:
            raise ClaudeError("the claude runtime was already started")
        self._started = True
        base = session_workspace(absolute_path(workdir), session_id)
        self._session_id = session_id
        self._claude_session = claude_session_id(session_id)
        self._workspace = base / "workspace"
        self._config_dir = base / "claude-config"
        self._workspace.mkdir(parents=True, exist_ok=True)
        self._config_dir.mkdir(parents=True, exist_ok=True)
        self._copy_config_files()
        transcript = self.transcript_path
        assert transcript is not None
        if history:
            # The history is the session's truth: whatever an earlier process left here is replaced.
            try:
                self._claude_version = await self._version()
                written = write_transcript(
                    transcript,
                    session_uuid=self._claude_session,
                    cwd=self._workspace,
                    version=self._claude_version,
                    model=self._model,
                    history=history,
                )
            except (TranscriptError, OSError) as error:
                raise ClaudeError(f"could not rehydrate the claude session: {error}") from error
            _log.debug("session %s: wrote %d messages to %s", session_id, written, transcript)
        else:
            transcript.unlink(missing_ok=True)  # a new conversation under this id
        try:
            await self._spawn(resume=bool(history))
        except ClaudeError as error:
            await self.close()
            what = "rehydrating" if history else "starting"
            raise ClaudeError(f"{what} the claude session failed: {error}") from error
        self._history = list(history)
        _log.info(
            "session %s: claude session %s (%s) started%s",
            session_id,
            self._claude_session,
            self._model or "default model",
            f" from {len(history)} history items" if history else "",
        )

    def _copy_config_files(self) -> None:
        assert self._config_dir is not None
        source = self.settings.resolved_config_from()
        try:
            if source.resolve() == self._config_dir.resolve():
                return
        except OSError:
            return
        for name in CONFIG_FILES:
            path = source / name
            if path.is_file():
                shutil.copy2(path, self._config_dir / name)  # keeps the credentials' 0600

    async def _version(self) -> str:
        """`claude --version`'s number (recorded in the transcript's entries), or ""."""
        assert self._config_dir is not None
        try:
            proc = await asyncio.create_subprocess_exec(
                self.settings.bin,
                "--version",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=self.settings.environment(self._config_dir),
            )
        except OSError as error:
            raise ClaudeError(f"could not run {self.settings.bin!r}: {error}") from error
        try:
            async with asyncio.timeout(VERSION_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return ""
        return out.decode(errors="replace").split(" ", 1)[0].strip()

    async def _spawn(self, *, resume: bool) -> ClaudeChannel:
        """Start claude and wait for its answer to `initialize`: a resume Claude cannot do (no
        such transcript) ends the process before it answers."""
        assert self._workspace is not None and self._config_dir is not None
        try:
            proc = await CodexProcess.spawn(
                self.settings.command(self._claude_session, resume=resume),
                cwd=self._workspace,
                env=self.settings.environment(self._config_dir),
            )
        except OSError as error:
            raise ClaudeError(f"could not run {self.settings.bin!r}: {error}") from error
        channel = ClaudeChannel(
            proc,
            session_id=self._session_id,
            request_timeout_s=self.settings.request_timeout_s,
            on_message=self._dispatch,
            on_exit=self._on_exit,
        )
        channel.closing = self._closed
        self._channel = channel
        try:
            await channel.request("initialize")
        except ClaudeError:
            await channel.close(EXIT_GRACE_S)
            raise
        return channel

    async def close(self) -> None:
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        try:
            turn = self._turn
            if turn is not None and turn.interrupt_reason is None:
                turn.interrupt_reason = "runtime closed"
            if self._channel is not None:
                await self._channel.close(EXIT_GRACE_S)
        finally:
            self._close_done.set()

    # -- messages from claude ---------------------------------------------------------------------

    def _on_exit(self) -> None:
        self._abandoned_results = 0  # a new process starts clean
        if self._turn is not None:
            self._turn.queue.put_nowait(_EXITED)

    def _dispatch(self, message: Message) -> None:
        if message.get("type") == "system" and message.get("subtype") == "init":
            self._model = str(message.get("model") or self._model)
            self._claude_version = str(message.get("claude_code_version") or self._claude_version)
        if self._abandoned_results:
            # The rest of a turn whose consumer went away, up to and including its result.
            if message.get("type") == "control_request":
                self._refuse(message, "tether: the turn was abandoned")
            elif message.get("type") == "result":
                self._abandoned_results -= 1
            return
        if self._turn is not None:
            self._turn.queue.put_nowait(message)
        elif message.get("type") == "control_request":
            self._refuse(message, "tether: no turn is running")
        else:
            _log.debug("session %s: claude %s outside a turn", self._session_id, message.get("type"))

    def _refuse(self, message: Message, text: str) -> None:
        if self._channel is not None:
            self._channel.refuse(str(message.get("request_id", "")), text)

    # -- turns ------------------------------------------------------------------------------------

    async def run_turn(self, turn_id: str, input: str) -> AsyncIterator[RuntimeEvent]:
        if not self._started or self._closed:
            yield TurnFailed("claude runtime is not started")
            return
        if self._turn is not None:
            yield TurnFailed("another turn is already running in this session")
            return
        turn = ClaudeTurn(turn_id, cwd=str(self._workspace))
        self._turn = turn
        try:
            channel = self._channel
            try:
                if channel is None or not channel.running:
                    # Stopped by a signal after an interrupt: its transcript is on disk here.
                    channel = await self._spawn(resume=True)
                turn.history.append(input_item(input, turn_id))
                await channel.send_user_text(input)
            except ClaudeError as error:
                self._finish_turn(turn)
                yield TurnFailed(f"claude could not take the turn: {error}")
                return
            terminal: RuntimeEvent | None = None
            while terminal is None:
                message = await self._next_message(turn)
                if message is None:  # the interrupt went unanswered: stop claude itself
                    _log.warning(
                        "session %s: claude did not end turn %s within %gs of the interrupt; stopping it",
                        self._session_id,
                        turn_id,
                        INTERRUPT_GRACE_S,
                    )
                    channel.proc.kill_group()
                    turn.interrupt_deadline = None
                elif message is _EXITED:
                    terminal = (
                        TurnInterrupted(turn.interrupt_reason)
                        if turn.interrupt_reason is not None
                        else TurnFailed(channel.exit_message())
                    )
                elif message is _WAKE:
                    continue
                elif isinstance(message, AgentError):  # an answer refused by respond()
                    yield message
                elif message.get("type") == "control_request":
                    opened = self._control_request(turn, message)
                    if opened is not None:
                        yield opened
                else:
                    turn.result_seen = turn.result_seen or message.get("type") == "result"
                    for event in message_events(turn, message, self._usage):
                        if isinstance(event, (TurnCompleted, TurnFailed, TurnInterrupted)):
                            terminal = event
                        else:
                            yield event
            self._history.extend(turn.history)
            for item in turn.history:
                yield HistoryAppended(item)
            # Released before the terminal event, so a consumer that stops at it leaves the
            # runtime ready for the next turn.
            self._finish_turn(turn)
            yield terminal
        finally:
            if not turn.finished.is_set():
                # The consumer went away mid-turn: stop Claude's turn too, without waiting, and
                # keep what is left of it (up to its result) out of the next turn.
                if self._channel is not None and self._channel.running and turn.history and not turn.result_seen:
                    self._abandoned_results += 1
                    with contextlib.suppress(ClaudeError):
                        self._channel.write(
                            {
                                "type": "control_request",
                                "request_id": "tether-abandon",
                                "request": {"subtype": "interrupt"},
                            }
                        )
                self._finish_turn(turn)

    def _control_request(self, turn: ClaudeTurn, message: Message) -> Any:
        request = message.get("request")
        request = request if isinstance(request, dict) else {}
        if request.get("subtype") == "can_use_tool":
            return self._approvals.open(turn, str(message.get("request_id", "")), request)
        self._refuse(message, f"tether does not support {request.get('subtype')!r}")
        return None

    def _finish_turn(self, turn: ClaudeTurn) -> None:
        self._approvals.end_turn(turn)
        if self._turn is turn:
            self._turn = None
        turn.finished.set()

    async def _next_message(self, turn: ClaudeTurn) -> Any:
        if turn.interrupt_deadline is None:
            return await turn.queue.get()
        try:
            async with asyncio.timeout_at(turn.interrupt_deadline):
                return await turn.queue.get()
        except TimeoutError:
            return None

    async def respond(self, request_id: str, answer: dict[str, Any]) -> bool:
        entry = self._approvals.take(request_id)
        if entry is None or self._channel is None:
            return False
        claude_request_id, turn, prompt = entry
        response = permission_response(answer, prompt)
        refused = response is None
        if response is None:
            text = (
                f"tether: the answer to request {request_id} was not delivered: Claude takes a decision of "
                f"{', '.join(DECISIONS)}; Claude denies the tool use"
            )
            _log.warning("session %s: %s; the answer was %s", self._session_id, text, json.dumps(answer)[:500])
            turn.queue.put_nowait(AgentError(text, will_retry=False, code="answerRefused"))
            response = {"behavior": "deny", "message": text}
        elif response.get("interrupt") and turn.interrupt_reason is None:
            turn.interrupt_reason = "the tool use was cancelled"
        try:
            await self._channel.answer(claude_request_id, response)
        except ClaudeExited:
            return False
        return not refused

    async def interrupt(self, reason: str) -> None:
        turn = self._turn
        if turn is None or turn.finished.is_set():
            return
        if turn.interrupt_reason is None:
            turn.interrupt_reason = reason
        if not turn.interrupt_sent and self._channel is not None:
            turn.interrupt_sent = True
            turn.interrupt_deadline = asyncio.get_running_loop().time() + INTERRUPT_GRACE_S
            turn.queue.put_nowait(_WAKE)
            try:
                await self._channel.request("interrupt", timeout_s=INTERRUPT_GRACE_S)
            except ClaudeError as error:
                # Typically the turn ended meanwhile; its result (or the exit) ends it.
                _log.info("session %s: interrupt: %s", self._session_id, error)
        # Return once the turn is over, so "interrupted" means stopped; bounded by the grace.
        try:
            async with asyncio.timeout(INTERRUPT_GRACE_S + 2.0):
                await turn.finished.wait()
        except TimeoutError:
            pass


__all__ = ["ClaudeError", "ClaudeExited", "ClaudeRuntime", "ClaudeSettings"]
