"""The shell runtime: each turn's input is a command run with `/bin/sh -c` in the session's
workspace, its stdout and stderr streamed as separate output chunks.

The benchmark runs more than a thousand short turns a second on two cores, so a turn costs one
fork/exec and nothing else: pipes are read by event-loop protocols (no reader tasks, no
threads) and the exit is noticed through a pidfd on the loop (asyncio's default child watcher
on 3.11 starts a thread per process). Interrupts signal the whole process group, which the
command leads (start_new_session=True), so pipelines and children die with it.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import functools
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tether.execution_worker._child import when_exited
from tether.execution_worker.runtime import (
    HistoryItem,
    HistoryRole,
    Output,
    OutputStream,
    Runtime,
    RuntimeEvent,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    session_workspace,
)

#: Time between SIGTERM and SIGKILL when a turn is interrupted.
KILL_GRACE_S = 2.0
#: After the command exits and its process group is killed, pipes still open can only be held
#: by a process that left the group (setsid, daemonised); the turn stops waiting for it then.
ORPHAN_PIPE_GRACE_S = 2.0


class _PipeReader(asyncio.Protocol):
    """Feeds one pipe of a turn into the turn, decoding UTF-8 across chunk boundaries."""

    def __init__(self, turn: _ShellTurn, stream: OutputStream) -> None:
        self._turn = turn
        self._stream = stream
        # One decoder per stream: a multi-byte character split across two reads must not
        # turn into two replacement characters.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def data_received(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._turn.push(Output(self._stream, text))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        text = self._decoder.decode(b"", final=True)
        if text:
            self._turn.push(Output(self._stream, text))
        self._turn.pipe_closed()


class _ShellTurn:
    """One running command: its process, its pipes, and the events waiting to be yielded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes]) -> None:
        self.loop = loop
        self.proc = proc
        self.events: collections.deque[RuntimeEvent] = collections.deque()
        self.output: list[str] = []
        self.open_pipes = 2
        self.returncode: int | None = None
        self.interrupt_reason: str | None = None
        self.finished = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._orphan_timer: asyncio.TimerHandle | None = None
        self._transports: list[asyncio.BaseTransport] = []

    async def attach(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for pipe, stream in ((self.proc.stdout, OutputStream.STDOUT), (self.proc.stderr, OutputStream.STDERR)):
            transport, _ = await self.loop.connect_read_pipe(functools.partial(_PipeReader, self, stream), pipe)
            self._transports.append(transport)
        when_exited(self.loop, self.proc, self._on_exit)

    # -- callbacks from the loop ---------------------------------------------------------------

    def push(self, event: RuntimeEvent) -> None:
        if isinstance(event, Output):
            self.output.append(event.text)
        self.events.append(event)
        self._wake()

    def pipe_closed(self) -> None:
        self.open_pipes -= 1
        self._maybe_finish()

    def _on_exit(self) -> None:
        # The leader is a zombie until we reap it, so its pid is still the group's id and
        # cannot be reused: the only safe moment to kill what it left behind (background
        # jobs would otherwise hold our pipes open and outlive the turn).
        self.signal_group(signal.SIGKILL)
        self._exited(self.proc.wait())

    def _exited(self, returncode: int) -> None:
        self.returncode = returncode
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if self.open_pipes:
            self._orphan_timer = self.loop.call_later(ORPHAN_PIPE_GRACE_S, self._close_pipes)
        self._maybe_finish()

    def _close_pipes(self) -> None:
        for transport in self._transports:
            transport.close()  # its protocol's connection_lost() counts the pipe as closed

    def _maybe_finish(self) -> None:
        if self.returncode is not None and self.open_pipes == 0 and not self.finished.done():
            if self._orphan_timer is not None:
                self._orphan_timer.cancel()
            self.finished.set_result(None)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- control --------------------------------------------------------------------------------

    async def wait_for_event(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def interrupt(self, reason: str) -> None:
        if self.finished.done() or self.interrupt_reason is not None:
            return
        self.interrupt_reason = reason
        self.signal_group(signal.SIGTERM)
        self._kill_timer = self.loop.call_later(KILL_GRACE_S, self.signal_group, signal.SIGKILL)

    def abandon(self) -> None:
        """The consumer went away mid-turn (cancelled): kill now and let the exit reap itself."""
        if self.returncode is None:
            self.signal_group(signal.SIGKILL)
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
        self._close_pipes()

    def terminal_event(self) -> RuntimeEvent:
        if self.interrupt_reason is not None:
            return TurnInterrupted(self.interrupt_reason)
        code = self.returncode if self.returncode is not None else -1
        # Killed by a signal: report it the way shells do (128 + signal number).
        return TurnCompleted(exit_code=128 - code if code < 0 else code)


class ShellRuntime(Runtime):
    """Runs each turn's input as a `/bin/sh -c` command in `<workdir>/sessions/<session_id>/`."""

    def __init__(self) -> None:
        self._session_id = ""
        self._workspace: Path | None = None
        self._history: list[HistoryItem] = []
        self._turn: _ShellTurn | None = None
        self._closed = False

    @property
    def workspace(self) -> Path | None:
        """The session's working directory, once started."""
        return self._workspace

    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        workspace = session_workspace(Path(workdir), session_id)
        workspace.mkdir(parents=True, exist_ok=True)
        self._session_id = session_id
        self._workspace = workspace
        # Rehydration only restores what the session saw; commands are never run again.
        self._history = list(history)

    async def run_turn(self, turn_id: str, input: str) -> AsyncIterator[RuntimeEvent]:
        if self._workspace is None or self._closed:
            yield TurnFailed("shell runtime is not started")
            return
        if self._turn is not None:
            yield TurnFailed("another turn is already running in this session")
            return
        self._history.append(HistoryItem(HistoryRole.INPUT, input, turn_id))
        if not input.strip():
            yield TurnFailed("empty command")
            return
        loop = asyncio.get_running_loop()
        try:
            proc = subprocess.Popen(  # noqa: ASYNC220 - see _child: uvloop's spawn is slower
                ["/bin/sh", "-c", input],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self._workspace,
                start_new_session=True,
                bufsize=0,
            )
        except OSError as exc:
            yield TurnFailed(f"could not start /bin/sh: {exc}")
            return
        turn = _ShellTurn(loop, proc)
        self._turn = turn
        try:
            await turn.attach()
            while True:
                while turn.events:
                    yield turn.events.popleft()
                if turn.finished.done():
                    break
                await turn.wait_for_event()
            if turn.output:
                self._history.append(HistoryItem(HistoryRole.OUTPUT, "".join(turn.output), turn_id))
            yield turn.terminal_event()
        finally:
            if not turn.finished.done():
                turn.abandon()
            self._turn = None

    async def interrupt(self, reason: str) -> None:
        turn = self._turn
        if turn is None:
            return
        turn.interrupt(reason)
        # Return once the process is gone, so "interrupted" means stopped; bounded by the
        # SIGKILL timer armed above.
        await asyncio.shield(turn.finished)

    def export_history(self) -> list[HistoryItem]:
        return list(self._history)

    def runtime_metadata(self) -> dict[str, Any]:
        return {"runtime": "shell", "shell": "/bin/sh"}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        turn = self._turn
        if turn is not None:
            turn.interrupt("runtime closed")
            turn.signal_group(signal.SIGKILL)
