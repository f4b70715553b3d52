"""The JSON-RPC client over one `codex app-server`'s stdio.

The wire is JSON-RPC without the "jsonrpc" field, one object per line. A reader task routes
each response to the request waiting for it and hands every other message (notifications and
server requests, such as approvals) to the runtime; a second task keeps the last stderr lines,
which say why the process exited when it does.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

from tether.execution_worker._codex_errors import CodexError, CodexExited, CodexRpcError
from tether.execution_worker._codex_process import STREAM_LIMIT, CodexProcess

_log = logging.getLogger("tether.execution_worker._codex")

_STDERR_TAIL_LINES = 20

Message = dict[str, Any]


class CodexRpc:
    """Requests, notifications and answers to one app-server; `on_message` gets every message
    that is not a response, `on_exit` is called once the process is gone."""

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
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self.exit_code: int | None = None
        #: Set by the owner when it is shutting app-server down: the exit is then expected.
        self.closing = False
        self._reader = asyncio.create_task(self._read_stdout(), name=f"codex stdout {session_id}")
        self._stderr_reader = asyncio.create_task(self._read_stderr(), name=f"codex stderr {session_id}")

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def exit_message(self) -> str:
        if self.exit_code is None:
            return "codex app-server is not running"
        tail = " | ".join(line for line in self._stderr_tail if line.strip())[-2000:]
        return f"codex app-server exited (code {self.exit_code})" + (f": {tail}" if tail else "")

    # -- writing ----------------------------------------------------------------------------------

    def write(self, message: Message) -> None:
        """Queue one message on app-server's stdin; raises CodexExited when it is gone."""
        stdin = self.proc.stdin
        if self.exit_code is not None or stdin.is_closing():
            raise CodexExited(self.exit_message())
        stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def send(self, message: Message) -> None:
        try:
            self.write(message)
        except CodexExited:
            # Its stdin closed before the reader recorded the exit: wait for it, so the error
            # carries the exit code and the last stderr lines rather than "not running".
            await self._await_exit()
            raise CodexExited(self.exit_message()) from None
        try:
            await self.proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as error:
            await self._await_exit()
            raise CodexExited(self.exit_message()) from error

    def notify(self, method: str) -> None:
        self.write({"method": method})

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send a request and return its result; raises CodexRpcError for an error answer,
        CodexExited, or CodexError when no answer comes within the request timeout."""
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await self.send({"id": request_id, "method": method, "params": params})
                reply = await future
        except TimeoutError:
            raise CodexError(f"{method} got no answer within {self._request_timeout_s:g}s") from None
        finally:
            self._pending.pop(request_id, None)
        if "error" in reply:
            error = reply["error"] or {}
            raise CodexRpcError(method, error.get("code"), str(error.get("message", error)))
        return reply.get("result")

    def request_nowait(self, method: str, params: dict[str, Any]) -> None:
        """Send a request whose answer nobody waits for (it is dropped when it comes)."""
        try:
            self.write({"id": next(self._ids), "method": method, "params": params})
        except CodexExited:
            pass

    def answer(self, rpc_id: int | str, result: Any) -> Any:
        """Answer a server request (the awaitable raises CodexExited when app-server is gone)."""
        return self.send({"id": rpc_id, "result": result})

    def reject(self, message: Message, text: str, code: int = -32601) -> None:
        """Answer a server request with a JSON-RPC error (by default "method not found"), so
        Codex never waits on it."""
        try:
            self.write({"id": message["id"], "error": {"code": code, "message": text}})
        except CodexExited:
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
        """Close stdin and give app-server `grace_s` to exit, then kill its process group; then
        wait (bounded) for the readers, which a grandchild may keep going by holding a pipe."""
        self.closing = True
        proc = self.proc
        if proc.returncode is None:
            proc.stdin.close()
            try:
                async with asyncio.timeout(grace_s):
                    await proc.wait()
            except TimeoutError:
                _log.warning("session %s: codex app-server did not exit; killing it", self._session_id)
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
            await self._exited()

    def _dispatch(self, message: Message) -> None:
        if "method" in message:
            self._on_message(message)
            return
        future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_result(message)

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
            _log.debug("session %s: codex: %s", self._session_id, text)

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
                    pass  # close() gave up on the pipes; the cleanup below must still run
            if self.exit_code is None:
                self.exit_code = -1
            log = _log.debug if self.closing else _log.warning
            log("session %s: %s", self._session_id, self.exit_message())
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CodexExited(self.exit_message()))
            self._pending.clear()
            self._on_exit_callback()
