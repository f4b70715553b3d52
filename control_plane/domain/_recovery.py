"""Recovery: rebuilding in-memory state from what is durable, at start and after a failed write.

Owns nothing of its own: it drives the other parts through their public methods. At start,
sessions with open turns are reloaded so their turns are dispatched when workers connect.
After a failed write, sequence numbers and states were assigned in memory for writes that are
now gone, so everything is rebuilt as after a restart: every record is dropped (live
subscribers re-resolve theirs), worker streams are closed so workers re-attach, and the open
sessions are reloaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._shared import Tasks, log
from .ports import SessionReader

if TYPE_CHECKING:
    from ._log import EventLog
    from ._restore import Restores
    from ._scheduling import Scheduler
    from ._sessions import SessionCache
    from ._turns import Turns
    from ._workers import Workers


class Recovery:
    def __init__(self, reader: SessionReader, tasks: Tasks) -> None:
        self._reader = reader
        self._tasks = tasks

    def connect(
        self,
        *,
        sessions: SessionCache,
        events: EventLog,
        turns: Turns,
        scheduler: Scheduler,
        restores: Restores,
        workers: Workers,
    ) -> None:
        self._sessions = sessions
        self._events = events
        self._turns = turns
        self._scheduler = scheduler
        self._restores = restores
        self._workers = workers

    async def reload_open_sessions(self) -> None:
        """Load every session with an open turn; a queued one waits for a worker."""
        for session_id in await self._reader.sessions_with_open_turns():
            rec = await self._sessions.load(session_id)
            if rec is not None and self._turns.ready(rec):
                self._scheduler.wait(rec)

    def on_write_failure(self) -> None:
        """The writer's failure hook: runs before the failed write's callers hear of it."""
        log.error("a write failed: rebuilding in-memory state from the database")
        dropped = self._sessions.drop_all()
        for rec in dropped:
            self._events.wake(rec)
            self._restores.drop(rec)
        self._scheduler.reset(dropped)
        self._workers.disconnect_all("the control plane is recovering from a failed write; reconnect")
        self._tasks.spawn(self.reload_open_sessions(), "tether-reload-after-write-failure")
