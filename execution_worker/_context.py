"""What the worker's parts share: the task group that owns every background task, and the link
to the control plane that `Worker.run()` opens."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from tether.execution_worker._lease import LeaseClient
from tether.v1 import worker_service_pb2_grpc

_log = logging.getLogger("tether.execution_worker")


class TaskGroup:
    """Owns background tasks: each is created by `spawn()`, forgotten when it ends (its failure
    logged, unless it is one of `quiet`, which its owner reports), and cancelled and awaited by
    `close()`."""

    def __init__(self, quiet: tuple[type[BaseException], ...] = ()) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._quiet = quiet

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, self._quiet):
            _log.error("task %r failed", task.get_name(), exc_info=error)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Link:
    """The worker's line to the control plane: the WorkerService stub and the Lease loop, set
    once by `Worker.run()`. Parts read them only while the worker runs."""

    def __init__(self) -> None:
        self._stub: worker_service_pb2_grpc.WorkerServiceStub | None = None
        self._lease: LeaseClient | None = None

    def open(self, stub: worker_service_pb2_grpc.WorkerServiceStub, lease: LeaseClient) -> None:
        self._stub, self._lease = stub, lease

    @property
    def is_open(self) -> bool:
        return self._lease is not None

    @property
    def stub(self) -> worker_service_pb2_grpc.WorkerServiceStub:
        if self._stub is None:
            raise RuntimeError("the worker is not running")
        return self._stub

    @property
    def lease(self) -> LeaseClient:
        if self._lease is None:
            raise RuntimeError("the worker is not running")
        return self._lease
