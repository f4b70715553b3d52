"""The sessions a worker holds a lease on, and what the worker keeps of each.

Every held session is live (`Session`): its event outbox, its runtime when warm, the turn or
restore running in it, its snapshot uploads and after-turn work. The worker holds the busy
sessions plus at most `warm_sessions` quiet ones, kept in least-recently-used order.

When more than `warm_sessions` sessions are quiet, the least recently used ones are cooled: a
final snapshot is uploaded when the stored one does not cover the runtime's history (as a
drain does), then the lease is released (`RELEASE_COOLED`) and the runtime and the outbox are
closed. A cooled session leaves the worker completely, so neither the worker nor the control
plane keeps anything live for it: its next turn is placed by the control plane on any eligible
worker at the next epoch and rehydrates from the stored history (Resume). A session with an
accepted offer awaiting its grant is not cooled. A session that leaves the worker (cooled,
released, revoked, lost, retired by a newer epoch, the worker closing) leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether.execution_worker._context import Link, TaskGroup
from tether.execution_worker._events import EventOutbox
from tether.execution_worker.runtime import HistoryItem, Runtime
from tether.v1 import worker_service_pb2

if TYPE_CHECKING:
    from tether.execution_worker._checkpoints import SessionWorkspace

_log = logging.getLogger("tether.execution_worker")

#: ReleaseLease.reason prefix when a quiet session is cooled (beyond the warm bound).
RELEASE_COOLED = "cooled"


#: How many released leases the worker remembers (see `SessionTable.gave_back`).
RELEASES_REMEMBERED = 4096


@dataclass(frozen=True)
class SnapshotBase:
    """The latest snapshot of a session this worker stored, and the history it sent: the next
    snapshot whose history begins with it sends only what follows (`_snapshots`)."""

    snapshot_id: str
    history: list[HistoryItem]


class LeaseLost(Exception):
    """A call of a session's was fenced off: the session is no longer this worker's."""


class RehydrationFailed(Exception):
    """The session's runtime could not be rebuilt from its stored history; str() says why."""


@dataclass(eq=False)
class Session:
    """A live session: its outbox, its runtime when warm, and the work running in it."""

    session_id: str
    lease_epoch: int
    runtime_name: str
    outbox: EventOutbox
    runtime: Runtime | None = None
    turn_id: str | None = None
    turn_task: asyncio.Task[None] | None = None
    # Rehydration of a restore-only placement (or for a requested snapshot); a turn granted
    # meanwhile waits for it.
    restore_task: asyncio.Task[Any] | None = None
    # An interrupt that arrived while the turn was still rehydrating.
    pending_interrupt: str | None = None
    dropped: bool = False
    # Session seq the runtime's history covered when it was rehydrated (events acknowledged
    # later move the watermark on; see `watermark`).
    history_seq: int = 0
    # Watermark of the latest snapshot stored at this epoch; None before the first.
    snapshot_seq: int | None = None
    # The latest snapshot stored from here, the base of the next one's delta.
    snapshot_base: SnapshotBase | None = None
    # Snapshot uploads running in the background.
    snapshot_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # The after-turn work: waiting for the turn's acknowledgements, then the snapshot policy.
    after_turn_task: asyncio.Task[None] | None = None
    # Being cooled: its final snapshot, then its release (see the module docstring).
    cooling_task: asyncio.Task[None] | None = None
    # Bumped when a turn is granted: an after-turn snapshot that sees it changed skips.
    turn_generation: int = 0
    turns_since_snapshot: int = 0
    # Turns finished here, and how many of them the latest snapshot stored from here covers.
    turns_finished: int = 0
    turns_stored: int = 0
    # Its workspace, once a runtime that moves its files is started (see `_checkpoints`).
    workspace: SessionWorkspace | None = None

    def ref(self) -> worker_service_pb2.LeaseRef:
        return worker_service_pb2.LeaseRef(session_id=self.session_id, lease_epoch=self.lease_epoch)

    @property
    def watermark(self) -> int:
        """The session seq the runtime's history covers once every emitted event is acked."""
        return max(self.history_seq, self.outbox.last_seq)

    @property
    def quiet(self) -> bool:
        """Nothing runs in it and everything it emitted is acknowledged."""
        return (
            not self.dropped
            and self.turn_task is None
            and self.restore_task is None
            and self.after_turn_task is None
            and not self.snapshot_tasks
            and self.outbox.all_acked
        )


class SessionTable:
    """Every session the worker holds, and the bound on the quiet ones.

    `new_outbox` builds a session's outbox; `before_cooling` runs before a quiet session is
    released (the final snapshot); `awaits_grant(session_id)` says an offer for the session was
    accepted and its grant has not come yet (such a session is not cooled).
    """

    def __init__(
        self,
        *,
        warm_sessions: int,
        tasks: TaskGroup,
        link: Link,
        changed: asyncio.Event,
        new_outbox: Callable[[str, int], EventOutbox],
        before_cooling: Callable[[Session], Awaitable[None]],
        awaits_grant: Callable[[str], bool],
    ) -> None:
        self.warm_sessions = warm_sessions
        self._tasks = tasks
        self._link = link
        self._changed = changed
        self._new_outbox = new_outbox
        self._before_cooling = before_cooling
        self._awaits_grant = awaits_grant
        # Least recently used first.
        self._live: collections.OrderedDict[str, Session] = collections.OrderedDict()
        # The epochs of the leases given back lately (a bounded memory): an offer granted at one
        # of them crossed the release on the wire and is not run.
        self._released: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._trim_scheduled = False
        #: Cleared by a drain: from then on sessions stay as they are until released.
        self.cooling_allowed = True

    # -- reading -------------------------------------------------------------------------------------

    def get(self, session_id: str) -> Session | None:
        """The live session, if `session_id` is live here."""
        return self._live.get(session_id)

    def live(self) -> list[Session]:
        return list(self._live.values())

    def session_ids(self) -> list[str]:
        """Every session held here."""
        return list(self._live)

    def held_refs(self) -> list[worker_service_pb2.LeaseRef]:
        return [s.ref() for s in self._live.values() if not s.dropped]

    def running_turns(self) -> int:
        return sum(1 for s in self._live.values() if s.turn_task is not None)

    def known_turns(self) -> set[str]:
        """The turns of the held sessions: running, or ended with events not acknowledged yet."""
        known: set[str] = set()
        for s in self._live.values():
            if s.dropped:
                continue
            if s.turn_id:
                known.add(s.turn_id)
            known |= s.outbox.unacked_turn_ids()
        return known

    def busy(self) -> bool:
        """A turn or a restore runs in some session."""
        return any(s.turn_task is not None or s.restore_task is not None for s in self._live.values())

    def sizes(self) -> dict[str, int]:
        """How many entries each per-session structure holds (for tests and operators)."""
        return {
            "live": len(self._live),
            "warm_runtimes": sum(1 for s in self._live.values() if s.runtime is not None),
            "snapshot_tasks": sum(len(s.snapshot_tasks) for s in self._live.values()),
        }

    # -- opening -------------------------------------------------------------------------------------

    def open(self, session_id: str, lease_epoch: int, runtime_name: str) -> Session:
        """The session at `lease_epoch`: the one held already, or a new one with no runtime
        (its first turn rehydrates it). Any other epoch of it is retired first: a new epoch
        fences the old one, so what was held under it may be stale."""
        self.retire_other_epochs(session_id, lease_epoch)
        session = self._live.get(session_id)
        if session is not None:
            self._live.move_to_end(session_id)
            return session
        session = Session(session_id, lease_epoch, runtime_name, self._new_outbox(session_id, lease_epoch))
        self._live[session_id] = session
        self.trim_soon()
        return session

    def touch(self, session: Session) -> None:
        """`session` was just used: it is the last to be cooled."""
        if self._live.get(session.session_id) is session:
            self._live.move_to_end(session.session_id)

    def retire_other_epochs(self, session_id: str, lease_epoch: int) -> None:
        session = self._live.get(session_id)
        if session is not None and session.lease_epoch != lease_epoch:
            del self._live[session_id]
            session.dropped = True
            self._tasks.spawn(self.dispose(session), f"retire {session_id}@{session.lease_epoch}")

    # -- the warm bound ------------------------------------------------------------------------------

    def trim_soon(self) -> None:
        """Cool what exceeds the warm bound, on the next loop iteration (callable from a task's
        done callback)."""
        if not self._trim_scheduled:
            self._trim_scheduled = True
            asyncio.get_running_loop().call_soon(self._trim)

    def _trim(self) -> None:
        self._trim_scheduled = False
        if not self.cooling_allowed:
            return
        quiet = [s for s in self._live.values() if self._coolable(s)]
        for session in quiet[: max(0, len(quiet) - self.warm_sessions)]:  # least recently used first
            session.cooling_task = self._tasks.spawn(self._cool(session), f"cool {session.session_id}")

    def _coolable(self, session: Session) -> bool:
        return session.quiet and session.cooling_task is None and not self._awaits_grant(session.session_id)

    async def _cool(self, session: Session) -> None:
        """The final snapshot, then, if the session is still quiet and still this one, its
        release: it leaves the worker, and its next turn rehydrates wherever it is placed."""
        generation = session.turn_generation
        try:
            await self._before_cooling(session)
            if self._live.get(session.session_id) is not session:
                return  # it left meanwhile
            if not session.quiet or self._awaits_grant(session.session_id) or session.turn_generation != generation:
                # A turn or an offer came meanwhile (the snapshot may not cover it): it stays,
                # and is looked at again once the cooling is over.
                self.trim_soon()
                return
            reason = f"{RELEASE_COOLED}: beyond the warm bound of {self.warm_sessions} sessions"
            # Out of the table (and of held_refs) before anything is awaited: an offer that
            # arrives from now on finds the session not held here, and its turn rehydrates.
            await self.release(session.session_id, session.lease_epoch, reason, session)
        finally:
            session.cooling_task = None

    # -- leaving -------------------------------------------------------------------------------------

    def drop_later(self, session_id: str, lease_epoch: int, why: str) -> None:
        """Forget a session whose lease is gone (any epoch when `lease_epoch` is 0). Callable
        from anywhere, including an outbox's own task: the teardown runs in a task of its own."""
        session = self._live.get(session_id)
        if session is None or (lease_epoch and session.lease_epoch != lease_epoch):
            return
        _log.warning("dropping session %s (epoch %d): %s", session_id, session.lease_epoch, why)
        del self._live[session_id]
        session.dropped = True
        self._changed.set()
        self._tasks.spawn(self.dispose(session), f"drop {session_id}")

    async def forget(self, session: Session, why: str) -> None:
        if self._live.get(session.session_id) is session:
            del self._live[session.session_id]
        session.dropped = True
        _log.debug("forgetting session %s: %s", session.session_id, why)
        await self.dispose(session)

    def gave_back(self, session_id: str, lease_epoch: int) -> bool:
        """Whether this worker released the session's lease at `lease_epoch` and holds it no more."""
        return self._released.get(session_id) == lease_epoch and session_id not in self._live

    async def release(self, session_id: str, lease_epoch: int, reason: str, session: Session | None = None) -> None:
        """Give a lease back with `reason` and forget the session (`session`, when live)."""
        if session is not None:
            if self._live.get(session_id) is session:
                del self._live[session_id]
            session.dropped = True  # out of held_refs before the release is on the wire
        self._released[session_id] = lease_epoch
        self._released.move_to_end(session_id)
        while len(self._released) > RELEASES_REMEMBERED:
            self._released.popitem(last=False)
        released = await self._link.lease.send(
            worker_service_pb2.LeaseRequest(
                release=worker_service_pb2.ReleaseLease(session_id=session_id, lease_epoch=lease_epoch, reason=reason)
            )
        )
        _log.info(
            "released session %s (epoch %d): %s%s",
            session_id,
            lease_epoch,
            reason,
            "" if released else " (not connected: the lease expires on the server)",
        )
        if session is not None:
            await self.forget(session, f"released: {reason}")

    async def dispose(self, session: Session) -> None:
        current = asyncio.current_task()
        # The turn's runtime kills its process on the way out; uploads of a lease that is
        # gone would only be refused.
        tasks = [
            t
            for t in (
                session.turn_task,
                session.restore_task,
                session.after_turn_task,
                session.cooling_task,
                *session.snapshot_tasks,
            )
            if t is not None and t is not current
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if session.runtime is not None:
            runtime, session.runtime = session.runtime, None
            await close_quietly(runtime)
        await session.outbox.close()
        self._changed.set()

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) for the sessions being cooled now (their final snapshot, then their
        release)."""
        cooling = [s.cooling_task for s in self._live.values() if s.cooling_task is not None]
        if cooling:
            await asyncio.wait(cooling, timeout=timeout)


async def close_quietly(runtime: Runtime) -> None:
    try:
        await runtime.close()
    except Exception:
        _log.exception("runtime close failed")
