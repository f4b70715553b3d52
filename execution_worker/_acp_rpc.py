"""The Agent Client Protocol's wire, client side: JSON-RPC 2.0 over an agent's stdio.

One JSON object per line. A reader task routes each response to the request waiting for it,
hands notifications (`session/update`) to `on_notification`, and runs the agent's requests to
the client (`fs/*`, `terminal/*`, `session/request_permission`) through `on_request`, each in a
task of its own (a permission waits for a person) that the connection owns and cancels at
close. A second task keeps the last stderr lines, which say why the agent exited when it does.

The whole protocol layer is this module: the methods the runtime calls are named in `_acp.py`,
and their params and results are plain JSON (see docs/dependencies.md for why not the
`agent-client-protocol` package).
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
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from tether.execution_worker._codex_process import STREAM_LIMIT, CodexProcess

_log = logging.getLogger("tether.execution_worker._acp")

_STDERR_TAIL_LINES = 20
#: How long `close()` waits for the agent to exit once its stdin is closed, before SIGTERM.
_STDIN_EOF_WAIT_S = 0.2
#: The ACP protocol version this client speaks.
PROTOCOL_VERSION = 1

# JSON-RPC error codes (and ACP's own).
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
AUTH_REQUIRED = -32000
RESOURCE_NOT_FOUND = -32002

Message = dict[str, Any]


class AcpError(Exception):
    """The agent could not do what the runtime asked."""


class AcpRpcError(AcpError):
    """A JSON-RPC error: the agent's answer to our request, or ours to the agent's."""

    def __init__(self, method: str, code: int | None, message: str, data: Any = None) -> None:
        detail = data.get("message") if isinstance(data, dict) else None
        text = f"{method} failed: {message}" + (f": {detail}" if detail and detail != message else "")
        super().__init__(f"{text} (code {code})")
        self.method = method
        self.code = code
        self.rpc_message = message
        self.data = data


class AcpExited(AcpError):
    """The agent process is gone."""


class AcpConnection:
    """Requests and notifications to one agent process, and its requests to us."""

    def __init__(
        self,
        proc: CodexProcess,
        *,
        name: str,
        request_timeout_s: float,
        on_notification: Callable[[str, dict[str, Any]], None],
        on_request: Callable[[str, dict[str, Any]], Awaitable[Any]],
        on_exit: Callable[[], None],
    ) -> None:
        self.proc = proc
        self._name = name
        self._request_timeout_s = request_timeout_s
        self._on_notification = on_notification
        self._on_request = on_request
        self._on_exit_callback = on_exit
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self.exit_code: int | None = None
        #: Set by the owner when it shuts the agent down: the exit is then expected.
        self.closing = False
        self._reader = asyncio.create_task(self._read_stdout(), name=f"acp stdout {name}")
        self._stderr_reader = asyncio.create_task(self._read_stderr(), name=f"acp stderr {name}")

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def exit_message(self) -> str:
        if self.exit_code is None:
            return "the acp agent is not running"
        tail = " | ".join(line for line in self._stderr_tail if line.strip())[-2000:]
        return f"the acp agent exited (code {self.exit_code})" + (f": {tail}" if tail else "")

    # -- writing ----------------------------------------------------------------------------------

    def _write(self, message: Message) -> None:
        stdin = self.proc.stdin
        if self.exit_code is not None or stdin.is_closing():
            raise AcpExited(self.exit_message())
        stdin.write(json.dumps({"jsonrpc": "2.0", **message}, separators=(",", ":")).encode() + b"\n")

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification (no answer); a gone agent is not an error here."""
        try:
            self._write({"method": method, "params": params})
        except AcpExited:
            pass

    async def request(self, method: str, params: dict[str, Any], *, timeout_s: float | None = -1.0) -> Any:
        """Send a request and return its result. Raises AcpRpcError for an error answer,
        AcpExited, or AcpError when no answer comes within `timeout_s` (default: the
        connection's request timeout; None: no deadline, for `session/prompt`, which the turn's
        own limits bound)."""
        deadline = self._request_timeout_s if timeout_s == -1.0 else timeout_s
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(deadline):
                self._write({"id": request_id, "method": method, "params": params})
                await self.proc.stdin.drain()
                reply = await future
        except TimeoutError:
            raise AcpError(f"{method} got no answer within {deadline:g}s") from None
        except (ConnectionError, BrokenPipeError):
            await self._await_exit()
            raise AcpExited(self.exit_message()) from None
        finally:
            self._pending.pop(request_id, None)
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise AcpRpcError(method, error.get("code"), str(error.get("message", error)), error.get("data"))
        return reply.get("result")

    def _answer(self, rpc_id: Any, *, result: Any = None, error: AcpRpcError | None = None) -> None:
        try:
            if error is None:
                self._write({"id": rpc_id, "result": result})
            else:
                self._write({"id": rpc_id, "error": {"code": error.code, "message": error.rpc_message}})
        except AcpExited:
            pass

    async def _await_exit(self) -> None:
        reader = self._reader
        if reader.done() or reader is asyncio.current_task():
            return
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(reader)
        except (TimeoutError, asyncio.CancelledError):
            pass

    # -- serving the agent's requests -------------------------------------------------------------

    def _serve(self, message: Message) -> None:
        task = asyncio.create_task(self._serve_one(message), name=f"acp {message['method']} {self._name}")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve_one(self, message: Message) -> None:
        method = str(message["method"])
        params = message.get("params")
        try:
            result = await self._on_request(method, params if isinstance(params, dict) else {})
        except AcpRpcError as error:
            self._answer(message["id"], error=error)
        except asyncio.CancelledError:
            self._answer(message["id"], error=AcpRpcError(method, INTERNAL_ERROR, "tether: the session is closing"))
            raise
        except Exception:
            _log.exception("%s: serving %s failed", self._name, method)
            self._answer(message["id"], error=AcpRpcError(method, INTERNAL_ERROR, "tether: internal error"))
        else:
            self._answer(message["id"], result=result)

    # -- shutting down ------------------------------------------------------------------------------

    async def close(self, grace_s: float) -> None:
        """Close stdin and give the agent `grace_s` to exit, then kill its process group; then
        wait (bounded) for the readers, which a grandchild may keep going by holding a pipe."""
        self.closing = True
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)
        proc = self.proc
        if proc.returncode is None:
            proc.stdin.close()
            # Not every agent exits at the end of its input (codex-acp does not): then SIGTERM.
            if not await _exits_within(proc, _STDIN_EOF_WAIT_S):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                if not await _exits_within(proc, grace_s):
                    _log.warning("%s: the acp agent did not exit; killing it", self._name)
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
                    _log.error("%s: the acp agent sent a message over %d bytes; dropped it", self._name, STREAM_LIMIT)
                    continue
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    _log.debug("%s: acp agent stdout: %s", self._name, line[:500])
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)
        finally:
            await self._exited()

    def _dispatch(self, message: Message) -> None:
        method = message.get("method")
        if isinstance(method, str):
            if "id" in message:
                self._serve(message)
            else:
                params = message.get("params")
                self._on_notification(method, params if isinstance(params, dict) else {})
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
            _log.debug("%s: acp agent: %s", self._name, text)

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
            log("%s: %s", self._name, self.exit_message())
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(AcpExited(self.exit_message()))
            self._pending.clear()
            self._on_exit_callback()


async def _exits_within(proc: CodexProcess, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await proc.wait()
    except TimeoutError:
        return False
    return True


def _bound_to_worker(command: list[str]) -> list[str]:
    """`command` run through `setpriv --pdeathsig KILL` where there is one (util-linux): an agent
    need not exit at the end of its input (codex-acp does not), so a SIGKILLed worker would
    leave it running. Not a `preexec_fn`: Python code between fork and exec in a threaded
    worker is what crashed children (see _codex_process)."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


async def spawn_agent(
    command: tuple[str, ...], *, cwd: Any, env: dict[str, str], name: str, request_timeout_s: float, **callbacks: Any
) -> AcpConnection:
    """Start the agent (in a process group of its own) and connect to it; raises AcpError when
    it cannot run."""
    if not command:
        raise AcpError("no acp agent command is configured (--acp-command)")
    try:
        proc = await CodexProcess.spawn(_bound_to_worker(list(command)), cwd=cwd, env=env)
    except OSError as error:
        raise AcpError(f"could not run the acp agent {command[0]!r}: {error}") from error
    return AcpConnection(proc, name=name, request_timeout_s=request_timeout_s, **callbacks)


def tether_version() -> str:
    try:
        return importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def initialize_params() -> dict[str, Any]:
    """`initialize`'s params: the client-side methods the worker serves (fs, terminal)."""
    return {
        "protocolVersion": PROTOCOL_VERSION,
        "clientCapabilities": {"fs": {"readTextFile": True, "writeTextFile": True}, "terminal": True},
        "clientInfo": {"name": "tether", "title": "Tether", "version": tether_version()},
    }
