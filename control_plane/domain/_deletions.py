"""Scheduled deletions and purging an owner: sessions that leave on a timetable or in bulk.

Owns the deletion sweeper. A scheduled deletion is a session's stored `delete_time_us`
(DeleteSession with delete_after), so it survives restarts: the sweeper, running wherever the
hub runs (the leader, with replicas), looks every `Timings.deletion_sweep_s` for sessions whose
time has come, a bounded batch at a time, and deletes each as DeleteSession does, once memory
agrees the time has come (a cancel may have committed after the store was read).

A purge deletes one owner's sessions in batches of `PURGE_BATCH`, each its own transaction,
with a pause between batches so other owners' commits, which share the one writer, go first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from . import errors
from ._shared import Tasks, log
from .messages import SessionView, Timings
from .model import now_us
from .ports import SessionReader

if TYPE_CHECKING:
    from ._sessions import SessionCache

MIN_DELETE_AFTER_S = 1.0
MAX_DELETE_AFTER_S = 3650 * 86400.0
_SWEEP_BATCH = 100
# Small, so no other owner's commit waits long behind one batch (each is one transaction of the
# one writer; bench/purge.py measures the effect on another owner's dispatch latency).
PURGE_BATCH = 25
# The pause after each purge batch, as a multiple of the time the batch took: the purge gets at
# most about half the writer's time while other work waits.
_PURGE_YIELD = 1.0


class Deletions:
    def __init__(self, reader: SessionReader, tasks: Tasks, timings: Timings) -> None:
        self._reader = reader
        self._tasks = tasks
        self._timings = timings
        self.swept = 0  # sessions the sweeper deleted since start (for tests and operators)

    def connect(self, *, sessions: SessionCache) -> None:
        self._sessions = sessions

    # ----------------------------------------------------------------- scheduling

    async def schedule(self, owner: str, session_id: str, after_s: float) -> SessionView:
        if not MIN_DELETE_AFTER_S <= after_s <= MAX_DELETE_AFTER_S:
            raise errors.InvalidArgument(
                "delete_after",
                f"must be between {MIN_DELETE_AFTER_S:g} s and {MAX_DELETE_AFTER_S / 86400:g} days (got {after_s:g} s); "
                "leave it unset to delete now",
            )
        return await self._sessions.set_delete_time(owner, session_id, now_us() + int(after_s * 1e6))

    async def cancel(self, owner: str, session_id: str) -> SessionView:
        return await self._sessions.set_delete_time(owner, session_id, 0)

    def start_sweeper(self) -> None:
        self._tasks.spawn(self._sweep_forever(), "tether-deletion-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._timings.deletion_sweep_s)
            try:
                await self.sweep()
            except errors.DomainError as exc:  # a failed write: the next sweep tries again
                log.warning("deletion sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Delete the sessions whose scheduled deletion is due; returns how many."""
        deleted = 0
        while True:
            now = now_us()
            due = await self._reader.sessions_due_for_deletion(now, _SWEEP_BATCH)
            for session_id, owner in due:
                rec = await self._sessions.load(session_id)
                if rec is None or rec.deleted or not 0 < rec.session.delete_time_us <= now:
                    continue  # gone already, or cancelled or moved later meanwhile
                try:
                    await self._sessions.delete(owner, session_id)
                except errors.SessionNotFound:
                    continue
                deleted += 1
                log.info("deleted session %s of owner %r as scheduled", session_id, owner)
            if len(due) < _SWEEP_BATCH:
                break
        self.swept += deleted
        return deleted

    # ----------------------------------------------------------------- purging an owner

    async def purge_sessions(self, owner: str) -> AsyncIterator[int]:
        """Delete every session of `owner`, a batch at a time; yields the count after each."""
        deleted = 0
        loop = asyncio.get_running_loop()
        while True:
            ids = await self._reader.session_ids_of(owner, PURGE_BATCH)
            if not ids:
                return
            started = loop.time()
            await self._sessions.delete_many(ids)
            deleted += len(ids)
            yield deleted
            await asyncio.sleep((loop.time() - started) * _PURGE_YIELD)
