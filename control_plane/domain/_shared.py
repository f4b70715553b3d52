"""What every part of the hub uses and none owns alone: the way to the writer port
(`Committer`) and the owner of background tasks (`Tasks`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from . import errors
from .ports import Changes, GroupCommitWriter, WriteFailed

# One logger for every part of the hub, under the name it had before the parts were split out,
# so logging configuration that names it keeps working.
log = logging.getLogger("tether.control_plane.domain.hub")


class Committer:
    """Submits changes to the group-commit writer; a failed write is UNAVAILABLE to callers."""

    def __init__(self, writer: GroupCommitWriter) -> None:
        self._writer = writer

    def submit(self, changes: Changes) -> asyncio.Future[None]:
        """Queue `changes` now and return the commit future, for callers that await it later."""
        return self._writer.submit(changes)

    async def commit(self, changes: Changes) -> None:
        # Submitted before the first suspension, like every decision: commit order is the
        # order in which callers decided.
        await self.wait(self._writer.submit(changes))

    @staticmethod
    async def wait(stored: asyncio.Future[None]) -> None:
        """Wait for a submitted commit; a failed write is UNAVAILABLE."""
        try:
            await stored
        except WriteFailed as exc:
            raise errors.Unavailable(f"the database did not accept the write: {exc}") from exc


class Tasks:
    """Every background task the hub starts; `stop()` cancels and awaits them all."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
