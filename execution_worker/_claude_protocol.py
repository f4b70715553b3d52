"""The stream-json channel over one `claude -p` process's stdio.

One JSON object per line both ways. The worker writes user messages and control requests
(`initialize`, `interrupt`) and answers Claude's own control requests (`can_use_tool`, the
permission prompts); Claude writes `system`, `stream_event`, `assistant`, `user` and `result`
messages, its control requests, and the control responses to ours. A reader task routes each
control response to the request waiting for it and hands every other message to the runtime; a
second task keeps the last stderr lines, which say why the process exited when it does.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

from tether.execution_worker._codex_process import STREAM_LIMIT, CodexProcess

_log = logging.getLogger("tether.execution_worker._claude")

_STDERR_TAIL_LINES = 20

Message = dict[str, Any]


class ClaudeError(Exception):
    """claude could not do what the runtime asked."""


class ClaudeExited(ClaudeError):
    """claude is gone."""


class ClaudeChannel:
    """Messages to and from one `claude -p`; `on_message` gets every message that is not the
    answer to one of our control requests, `on_exit` is called once the process is gone."""

    def __init__(
        self,
        proc: CodexProcess,
        *,
        session_id: str,
        request_timeout_s: float,
        on_message: Callable[[Message], None],
        on_exit: Callable[[], None],
    ) -> None:
        self.proc = proc
        self._session_id = session_id
        self._request_timeout_s = request_timeout_s
        self._on_message = on_message
        self._on_exit_callback = on_exit
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self.exit_code: int | None = None
        #: Set by the owner when it is shutting claude down: the exit is then expected.
        self.closing = False
        self._reader = asyncio.create_task(self._read_stdout(), name=f"claude stdout {session_id}")
        self._stderr_reader = asyncio.create_task(self._read_stderr(), name=f"claude stderr {session_id}")

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def exit_message(self) -> str:
        if self.exit_code is None:
            return "claude is not running"
        tail = " | ".join(line for line in self._stderr_tail if line.strip())[-2000:]
        return f"claude exited (code {self.exit_code})" + (f": {tail}" if tail else "")

    # -- writing ----------------------------------------------------------------------------------

    def write(self, message: Message) -> None:
        """Queue one message on claude's stdin; raises ClaudeExited when it is gone."""
        stdin = self.proc.stdin
        if self.exit_code is not None or stdin.is_closing():
            raise ClaudeExited(self.exit_message())
        stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def send(self, message: Message) -> None:
        self.write(message)
        try:
            await self.proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as error:
            await self._await_exit()
            raise ClaudeExited(self.exit_message()) from error

    async def send_user_text(self, text: str) -> None:
        """A user message: the input of a turn."""
        await self.send({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": text}]}})

    async def request(self, subtype: str, timeout_s: float | None = None, **fields: Any) -> Message:
        """Send a control request and return its response's payload; raises ClaudeError for an
        error response or no answer within the timeout, ClaudeExited when claude is gone."""
        request_id = f"tether-{next(self._ids)}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        timeout = self._request_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.send(
                    {"type": "control_request", "request_id": request_id, "request": {"subtype": subtype, **fields}}
                )
                response = await future
        except TimeoutError:
            raise ClaudeError(f"{subtype} got no answer within {timeout:g}s") from None
        finally:
            self._pending.pop(request_id, None)
        if response.get("subtype") == "error":
            raise ClaudeError(f"{subtype} failed: {response.get('error') or response}")
        payload = response.get("response")
        return payload if isinstance(payload, dict) else {}

    async def answer(self, request_id: str, response: Message) -> None:
        """Answer one of claude's control requests (raises ClaudeExited when claude is gone)."""
        await self.send(
            {
                "type": "control_response",
                "response": {"subtype": "success", "request_id": request_id, "response": response},
            }
        )

    def refuse(self, request_id: str, text: str) -> None:
        """Answer one of claude's control requests with an error, so it never waits on it."""
        try:
            self.write(
                {"type": "control_response", "response": {"subtype": "error", "request_id": request_id, "error": text}}
            )
        except ClaudeExited:
            pass

    async def _await_exit(self) -> None:
        """The process is going away: give the stdout reader a moment to record its exit code
        and last stderr lines, so the error says why."""
        reader = self._reader
        if reader.done() or reader is asyncio.current_task():
            return
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(reader)
        except (TimeoutError, asyncio.CancelledError):
            pass

    # -- shutting down ------------------------------------------------------------------------------

    async def close(self, grace_s: float) -> None:
        """Close stdin (claude exits at the end of its input) and give it `grace_s`, then kill
        its process group; then wait (bounded) for the readers."""
        self.closing = True
        proc = self.proc
        if proc.returncode is None:
            proc.stdin.close()
            try:
                async with asyncio.timeout(grace_s):
                    await proc.wait()
            except TimeoutError:
                _log.info("session %s: claude did not exit; killing it", self._session_id)
                proc.kill_group()
                await proc.wait()
        for task in (self._reader, self._stderr_reader):
            try:
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # -- reading ------------------------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        stdout = self.proc.stdout
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # a line over STREAM_LIMIT: nothing we can route
                    _log.error(
                        "session %s: claude sent a message over %d bytes; dropped it", self._session_id, STREAM_LIMIT
                    )
                    continue
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    _log.debug("session %s: claude stdout: %s", self._session_id, line[:500])
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)
        finally:
            await self._exited()

    def _dispatch(self, message: Message) -> None:
        if message.get("type") == "control_response":
            response = message.get("response")
            response = response if isinstance(response, dict) else {}
            future = self._pending.get(str(response.get("request_id", "")))
            if future is not None and not future.done():
                future.set_result(response)
            return
        self._on_message(message)

    async def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        while True:
            try:
                line = await stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self._stderr_tail.append(text)
            _log.debug("session %s: claude: %s", self._session_id, text)

    async def _exited(self) -> None:
        proc = self.proc
        try:
            self.exit_code = await proc.wait()
        except asyncio.CancelledError:
            self.exit_code = proc.returncode if proc.returncode is not None else -1
            raise
        finally:
            if not self._stderr_reader.done():
                try:  # the last stderr lines say why it exited
                    async with asyncio.timeout(0.5):
                        await asyncio.shield(self._stderr_reader)
                except (TimeoutError, asyncio.CancelledError):
                    pass
            if self.exit_code is None:
                self.exit_code = -1
            log = _log.debug if self.closing else _log.warning
            log("session %s: %s", self._session_id, self.exit_message())
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ClaudeExited(self.exit_message()))
            self._pending.clear()
            self._on_exit_callback()
