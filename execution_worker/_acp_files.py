"""The client-side methods an ACP agent may call, served inside the session's workspace.

`fs/read_text_file` and `fs/write_text_file` reach only files under the workspace: a path is
resolved (symbolic links included) before use, and one that ends up outside is refused with
INVALID_PARAMS; the file itself is opened with O_NOFOLLOW, so a link swapped in after the check
is refused too. `terminal/*` runs commands whose working directory must be in the workspace, in
a process group of their own, killed when released or when the session closes. A terminal is
not a sandbox: what the command does once running is the agent's and the OS's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from pathlib import Path
from typing import Any

from tether.execution_worker._acp_rpc import INVALID_PARAMS, RESOURCE_NOT_FOUND, AcpRpcError

#: The largest text file `fs/read_text_file` hands over.
MAX_READ_BYTES = 16 * 1024 * 1024
#: A terminal keeps at most this much output when the agent gives no `outputByteLimit`.
DEFAULT_OUTPUT_LIMIT = 1024 * 1024


def confined_path(workspace: Path, path: Any, method: str) -> Path:
    """`path` (absolute, or relative to the workspace) with every symbolic link resolved;
    raises AcpRpcError when it is not a path or lies outside the workspace."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise AcpRpcError(method, INVALID_PARAMS, "tether: a path is required")
    root = workspace.resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise AcpRpcError(method, INVALID_PARAMS, f"tether: {path} is outside the session's workspace {root}")
    return resolved


class WorkspaceFiles:
    """`fs/read_text_file` and `fs/write_text_file` inside one workspace."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace

    def read_text_file(self, params: dict[str, Any]) -> dict[str, Any]:
        method = "fs/read_text_file"
        path = confined_path(self.workspace, params.get("path"), method)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise AcpRpcError(method, RESOURCE_NOT_FOUND, f"tether: no file {path}") from None
        except OSError as error:
            raise AcpRpcError(method, INVALID_PARAMS, f"tether: cannot read {path}: {error.strerror}") from None
        with os.fdopen(fd, "rb") as file:
            data = file.read(MAX_READ_BYTES + 1)
        if len(data) > MAX_READ_BYTES:
            raise AcpRpcError(method, INVALID_PARAMS, f"tether: {path} is over {MAX_READ_BYTES} bytes")
        text = data.decode("utf-8", errors="replace")
        line, limit = params.get("line"), params.get("limit")
        if line is not None or limit is not None:
            lines = text.splitlines(keepends=True)
            start = max(int(line or 1) - 1, 0)
            end = start + int(limit) if limit is not None else None
            text = "".join(lines[start:end])
        return {"content": text}

    def write_text_file(self, params: dict[str, Any]) -> None:
        method = "fs/write_text_file"
        content = params.get("content")
        if not isinstance(content, str):
            raise AcpRpcError(method, INVALID_PARAMS, "tether: content must be a string")
        path = confined_path(self.workspace, params.get("path"), method)
        if path == self.workspace.resolve():
            raise AcpRpcError(method, INVALID_PARAMS, "tether: the workspace itself is not a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The parents were resolved inside the workspace; O_NOFOLLOW refuses a link put in
            # the file's place since.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise AcpRpcError(method, INVALID_PARAMS, f"tether: cannot write {path}: {error.strerror}") from None
        with os.fdopen(fd, "wb") as file:
            file.write(content.encode())
        return None


class _Terminal:
    def __init__(self, proc: asyncio.subprocess.Process, limit: int) -> None:
        self.proc = proc
        self.limit = limit
        self.output = bytearray()
        self.truncated = False
        self.reader = asyncio.create_task(self._read(), name=f"acp terminal {proc.pid}")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.output += chunk
            if len(self.output) > self.limit:
                del self.output[: len(self.output) - self.limit]
                self.truncated = True
        await self.proc.wait()

    def text(self) -> str:
        # Cut from the front, the output may start inside a character.
        return self.output.decode("utf-8", errors="ignore" if self.truncated else "replace")

    def exit_status(self) -> dict[str, Any] | None:
        code = self.proc.returncode
        if code is None or not self.reader.done():
            return None
        if code < 0:
            return {"exitCode": None, "signal": signal.Signals(-code).name}
        return {"exitCode": code, "signal": None}

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class Terminals:
    """`terminal/*`: commands the agent runs through the client, in the workspace."""

    def __init__(self, workspace: Path, env: dict[str, str]) -> None:
        self.workspace = workspace
        self._env = env
        self._ids = itertools.count(1)
        self._terminals: dict[str, _Terminal] = {}

    def __len__(self) -> int:
        return len(self._terminals)

    async def create(self, params: dict[str, Any]) -> dict[str, Any]:
        method = "terminal/create"
        command = params.get("command")
        args = params.get("args") or []
        if not isinstance(command, str) or not command:
            raise AcpRpcError(method, INVALID_PARAMS, "tether: a command is required")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise AcpRpcError(method, INVALID_PARAMS, "tether: args must be strings")
        cwd = confined_path(self.workspace, params.get("cwd") or str(self.workspace), method)
        env = dict(self._env)
        for entry in params.get("env") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                env[entry["name"]] = str(entry.get("value", ""))
        limit = params.get("outputByteLimit")
        limit = int(limit) if isinstance(limit, int) and limit > 0 else DEFAULT_OUTPUT_LIMIT
        try:
            proc = await asyncio.create_subprocess_exec(
                command,
                *args,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            raise AcpRpcError(method, INVALID_PARAMS, f"tether: cannot run {command!r}: {error.strerror}") from None
        terminal_id = f"term_{next(self._ids)}"
        self._terminals[terminal_id] = _Terminal(proc, limit)
        return {"terminalId": terminal_id}

    def _get(self, method: str, params: dict[str, Any]) -> _Terminal:
        terminal = self._terminals.get(str(params.get("terminalId")))
        if terminal is None:
            raise AcpRpcError(method, RESOURCE_NOT_FOUND, f"tether: no terminal {params.get('terminalId')!r}")
        return terminal

    def output(self, params: dict[str, Any]) -> dict[str, Any]:
        terminal = self._get("terminal/output", params)
        return {"output": terminal.text(), "truncated": terminal.truncated, "exitStatus": terminal.exit_status()}

    def text_of(self, terminal_id: str) -> str | None:
        """The output of a terminal so far (for the tool call that shows it), None if unknown."""
        terminal = self._terminals.get(terminal_id)
        return terminal.text() if terminal is not None else None

    async def wait_for_exit(self, params: dict[str, Any]) -> dict[str, Any]:
        terminal = self._get("terminal/wait_for_exit", params)
        await asyncio.shield(terminal.reader)
        status = terminal.exit_status()
        assert status is not None
        return status

    def kill(self, params: dict[str, Any]) -> None:
        self._get("terminal/kill", params).kill()
        return None

    async def release(self, params: dict[str, Any]) -> None:
        terminal = self._get("terminal/release", params)
        del self._terminals[str(params.get("terminalId"))]
        await self._stop(terminal)
        return None

    async def close(self) -> None:
        terminals, self._terminals = list(self._terminals.values()), {}
        for terminal in terminals:
            await self._stop(terminal)

    @staticmethod
    async def _stop(terminal: _Terminal) -> None:
        terminal.kill()
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(terminal.reader)
        except TimeoutError:  # a grandchild holds the pipe
            terminal.reader.cancel()
            await asyncio.gather(terminal.reader, return_exceptions=True)
