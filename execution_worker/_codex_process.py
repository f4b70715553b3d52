"""`codex app-server` as a child process: spawned in its own process group, its three pipes
connected to the event loop, its exit noticed through a pidfd (see `_child`).

Spawned with `subprocess.Popen`: through uvloop's own spawn, about one start in fifteen died
with SIGSEGV before exec in the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

from tether.execution_worker._child import when_exited

#: A stdout line is one JSON message; turn items carry whole command outputs and diffs.
STREAM_LIMIT = 64 * 1024 * 1024


class CodexProcess:
    """One running `codex app-server`, with asyncio streams over its pipes."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: asyncio.StreamWriter) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdin = stdin
        self.stdout = asyncio.StreamReader(limit=STREAM_LIMIT)
        self.stderr = asyncio.StreamReader(limit=STREAM_LIMIT)
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @classmethod
    async def spawn(cls, args: list[str], *, cwd: Path, env: dict[str, str]) -> CodexProcess:
        """Start it in a process group of its own: a Ctrl-C meant for the worker (which drains)
        must not kill the session's Codex, and `kill_group()` reaches what Codex left running.
        Raises OSError when it cannot run."""
        popen = subprocess.Popen(  # noqa: ASYNC220 - on purpose, see the module docstring
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            bufsize=0,
        )
        loop = asyncio.get_running_loop()
        assert popen.stdin and popen.stdout and popen.stderr
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), popen.stdin
        )
        proc = cls(popen, asyncio.StreamWriter(transport, protocol, None, loop))
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(proc.stdout), popen.stdout)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(proc.stderr), popen.stderr)
        when_exited(loop, popen, proc._on_exit)
        return proc

    def _on_exit(self) -> None:
        if not self._exited.done():
            self._exited.set_result(self.popen.wait())

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill_group(self) -> None:
        """SIGKILL the process group (app-server and whatever it left running)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
