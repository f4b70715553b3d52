"""Reads that run to their end when their caller is cancelled.

A caller goes away mid-read often: a worker's `Resume` cut off by its channel closing, a
subscriber leaving, the server stopping. When the cancellation reaches SQLAlchemy's async
driver mid-query, SQLAlchemy invalidates the connection and terminates it, and with aiosqlite a
second cancellation during that termination can leave its graceful close waiting for a worker
thread that the forced close has already stopped: the event loop then never finishes
cancelling its tasks at shutdown (seen as a test teardown hung in `_cancel_all_tasks`).

So a read runs in a task of its own (`Reader`, every method; the credential and blob
stores' reads, method by method, and `SqlBlobStore.read` page by page); a cancelled caller
waits for it to end (a read takes milliseconds), then is cancelled as asked, and the
connection goes back to the pool whole.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound=type)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # an error nobody waits for any more is not "never retrieved"


async def to_the_end(read: Coroutine[Any, Any, T]) -> T:
    """Await `read`; if the caller is cancelled meanwhile, let the read finish first."""
    task = asyncio.ensure_future(read)
    task.add_done_callback(_retrieve)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                pass  # cancelled again: the read finishes in the background
        raise


def runs_to_the_end(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Method decorator: the read runs to its end (see `to_the_end`). Only for reads and
    idempotent writes: a write the caller gave up on would still be made."""

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await to_the_end(method(*args, **kwargs))

    return run


def reads_run_to_the_end(cls: C) -> C:
    """Class decorator: every coroutine method of `cls` runs to its end (see `to_the_end`)."""
    for name, value in list(vars(cls).items()):
        if not name.startswith("__") and inspect.iscoroutinefunction(value):
            setattr(cls, name, runs_to_the_end(value))
    return cls
