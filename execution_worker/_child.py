"""Noticing that a child process exited, on the event loop, without a thread per child.

Runtimes spawn with `subprocess.Popen` (vfork/exec): the event loop's own spawn forks the whole
worker under uvloop, which runs gRPC's fork handlers in the child. asyncio's default child
watcher on 3.11 starts a thread per process; a pidfd on the loop costs nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable

_HAS_PIDFD = hasattr(os, "pidfd_open")


def when_exited(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes], callback: Callable[[], None]) -> None:
    """Call `callback()` on `loop` once `proc` has exited; it then reaps it with `proc.wait()`.

    With a pidfd the callback runs before the reaping, while the zombie's pid is still its
    process group's id: the one safe moment to signal what the child left behind. Without one
    (not Linux) a thread waits, and the callback runs after the reaping.
    """
    if _HAS_PIDFD:
        pidfd = os.pidfd_open(proc.pid)

        def ready() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            callback()

        loop.add_reader(pidfd, ready)
    else:  # pragma: no cover - non-Linux fallback; costs a thread per child
        loop.run_in_executor(None, proc.wait).add_done_callback(lambda _: callback())
