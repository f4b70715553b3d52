"""Restore: moving an idle session onto another worker and rehydrating it there, now.

Owns each record's `restoring` (`Restore`): the worker offered the session, at which epoch,
whether it accepted (granted), the offer timer and the future RestoreSession waits on. Three
steps: offered (the session is offered restore-only, occupying a slot on the worker), granted
(the worker accepted: it gets the lease at the next epoch), confirmed (its snapshot at that
epoch is stored). Any failure on the way fails the call; a restore granted but never
confirmed frees the lease again, so the session's next turn rehydrates wherever it lands.
While a restore is under way, the session's turns wait for it. The records with a restore
under way are indexed, so a worker going away checks only those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import errors
from ._shared import Committer, log
from .messages import GrantMsg, OfferMsg, RevokeMsg, Timings
from .model import now_us
from .ports import Changes

if TYPE_CHECKING:
    from ._leases import Leases
    from ._log import EventLog
    from ._record import SessionRecord
    from ._scheduling import Scheduler
    from ._sessions import SessionCache
    from ._turns import Turns
    from ._workers import WorkerConn, Workers


@dataclass
class Restore:
    """A RestoreSession under way: offered, then granted, then confirmed by a snapshot."""

    worker_id: str
    epoch: int
    done: asyncio.Future[None]
    granted: bool = False
    timer: asyncio.TimerHandle | None = None  # until the worker accepts

    @property
    def slot(self) -> str:
        return _restore_slot(self.epoch)


def _restore_slot(epoch: int) -> str:
    """The in-flight key a placement occupies on its worker until granted."""
    return f"restore:{epoch}"


class Restores:
    def __init__(self, committer: Committer, timings: Timings) -> None:
        self._committer = committer
        self._timings = timings
        self._restoring: dict[str, SessionRecord] = {}  # session id -> record with a restore under way

    def connect(
        self,
        *,
        sessions: SessionCache,
        turns: Turns,
        leases: Leases,
        workers: Workers,
        scheduler: Scheduler,
        events: EventLog,
    ) -> None:
        self._sessions = sessions
        self._turns = turns
        self._leases = leases
        self._workers = workers
        self._scheduler = scheduler
        self._events = events

    def in_progress(self, rec: SessionRecord) -> bool:
        return rec.restoring is not None

    async def restore_session(
        self, owner: str, session_id: str, selector: dict[str, str], worker_id: str
    ) -> SessionRecord:
        """Move an idle session onto another worker and rehydrate it there, now."""
        rec = await self._sessions.require(session_id, owner)
        if rec.session.archived:
            raise errors.SessionArchived(f"session {session_id!r} is archived", session_id=session_id)
        if self._turns.busy(rec):
            raise errors.SessionBusy(
                f"session {session_id!r} has a turn queued or running; interrupt it or wait for "
                "it to end, then restore",
                session_id=session_id,
            )
        if rec.restoring is not None:
            raise errors.SessionBusy(f"session {session_id!r} is already being restored", session_id=session_id)
        holder = self._leases.holder(rec)
        runtime = rec.session.runtime
        if self._leases.epoch(rec) > 0 and self._workers.portability(owner, runtime, holder) == "none":
            raise errors.RuntimeNotPortable(
                f"session {session_id!r} cannot move: its runtime {runtime!r} declares portability none "
                "(the agent's state stays on the worker that ran it); start a new session instead",
                session_id=session_id,
            )
        if worker_id:
            w = self._workers.get(worker_id)
            if w is None or w.info.owner != owner:
                raise errors.WorkerNotFound(f"no worker {worker_id!r} is registered", worker_id=worker_id)
            if not w.connected:
                raise errors.WorkerNotConnected(f"worker {worker_id!r} is not connected", worker_id=worker_id)
            if worker_id == holder:
                raise errors.InvalidArgument("worker_id", f"worker {worker_id!r} already holds the session")
        wanted = {**rec.session.worker_selector, **selector}
        best = self._scheduler.most_free(rec.session, selector, only=worker_id, exclude=holder)
        if best is None:
            raise errors.NoWorker(
                f"no connected worker other than the holder runs {rec.session.runtime!r}"
                + (f" with labels {wanted}" if wanted else "")
                + " and has a free slot",
                session_id=session_id,
            )
        epoch = self._leases.epoch(rec) + 1
        restore = Restore(best.info.worker_id, epoch, asyncio.get_running_loop().create_future())
        rec.restoring = restore
        self._restoring[session_id] = rec
        best.occupy(restore.slot)
        timeout = self._timings.offer_timeout_s
        restore.timer = asyncio.get_running_loop().call_later(
            timeout,
            lambda: self.fail(
                rec,
                epoch,
                errors.Timeout(
                    f"worker {restore.worker_id!r} did not accept session {session_id!r} within {timeout:g}s",
                    worker_id=restore.worker_id,
                ),
            ),
        )
        best.push(
            OfferMsg(
                session_id=session_id,
                turn_id="",
                input="",
                runtime=rec.session.runtime,
                lease_epoch=epoch,
                resume_required=True,
                last_seq=self._events.committed_seq(rec),
                accept_deadline_us=now_us() + int(timeout * 1e6),
                restore_only=True,
            )
        )
        try:
            async with asyncio.timeout(timeout + self._timings.snapshot_timeout_s):
                await asyncio.shield(restore.done)
        except TimeoutError:
            self.fail(
                rec,
                epoch,
                errors.Timeout(
                    f"worker {restore.worker_id!r} took session {session_id!r} but did not confirm "
                    f"its rehydration within {self._timings.snapshot_timeout_s:g}s",
                    worker_id=restore.worker_id,
                ),
            )
            await restore.done
        return rec

    async def accept(self, w: WorkerConn, rec: SessionRecord | None, session_id: str, epoch: int) -> None:
        """The worker accepted a restore-only offer: it gets the lease at the restore's epoch."""
        restore = rec.restoring if rec is not None else None
        if (
            rec is None
            or restore is None
            or restore.granted
            or restore.worker_id != w.info.worker_id
            or restore.epoch != epoch
        ):
            w.free(_restore_slot(epoch))
            w.push(RevokeMsg(session_id, epoch, "the offer is no longer valid"))
            return
        if restore.timer:
            restore.timer.cancel()
            restore.timer = None
        restore.granted = True
        w.free(restore.slot)
        changes = Changes()
        self._leases.grant(rec, w, epoch, changes, "restored onto another worker")
        grant = GrantMsg(session_id, "", epoch, now_us() + int(self._timings.lease_ttl_s * 1e6))
        changes.on_commit.append(lambda: w.push(grant))
        await self._committer.commit(changes)

    def reject(self, rec: SessionRecord, worker_id: str, reason: str) -> None:
        """The worker declined a restore-only offer."""
        restore = rec.restoring
        if restore is not None and restore.worker_id == worker_id and not restore.granted:
            self.fail(
                rec,
                restore.epoch,
                errors.NoWorker(
                    f"worker {worker_id!r} declined session {rec.session_id!r}: {reason or 'no reason'}",
                    session_id=rec.session_id,
                    worker_id=worker_id,
                ),
            )

    def _clear(self, rec: SessionRecord) -> None:
        rec.restoring = None
        if self._restoring.get(rec.session_id) is rec:
            del self._restoring[rec.session_id]

    def worker_gone(self, worker_id: str) -> None:
        """`worker_id` takes nothing more: a restore offered to it and not yet taken fails."""
        for rec in list(self._restoring.values()):
            restore = rec.restoring
            if restore is not None and restore.worker_id == worker_id and not restore.granted:
                self.fail(
                    rec,
                    restore.epoch,
                    errors.NoWorker(
                        f"worker {worker_id!r} went away before taking session {rec.session_id!r}; try again",
                        session_id=rec.session_id,
                    ),
                )

    def abandon(self, rec: SessionRecord, error: errors.DomainError) -> None:
        """Fail the session's restore, if one is under way."""
        if rec.restoring is not None:
            self.fail(rec, rec.restoring.epoch, error)

    def fail(self, rec: SessionRecord, epoch: int, error: errors.DomainError) -> None:
        restore = rec.restoring
        if restore is None or restore.epoch != epoch:
            return
        self._clear(rec)
        if restore.timer:
            restore.timer.cancel()
            restore.timer = None
        self._workers.free_slot(restore.worker_id, restore.slot)
        if restore.granted and self._leases.held_at(rec, epoch):
            # Granted but never confirmed: the lease must not stay with a runtime that is not
            # there. Free it; the next turn rehydrates wherever it lands.
            self._leases.drop_soon(rec, str(error), f"tether-restore-failed-{rec.session_id}", cause="restore_failed")
        if not restore.done.done():
            restore.done.set_exception(error)
        self._scheduler.dispatch(rec)

    def confirmation(self, rec: SessionRecord, worker_id: str, epoch: int) -> Callable[[], None] | None:
        """What to run once a snapshot from `worker_id` at `epoch` commits: the end of the
        session's restore if that snapshot confirms it, else None."""
        restore = rec.restoring
        if restore is not None and restore.granted and restore.epoch == epoch and restore.worker_id == worker_id:
            return lambda: self._finish(rec, restore)
        return None

    def _finish(self, rec: SessionRecord, restore: Restore) -> None:
        if rec.restoring is restore:
            self._clear(rec)
        if not restore.done.done():
            restore.done.set_result(None)
        self._leases.rehydrated(rec, restore=True)
        log.info("session %s restored onto %s (epoch %d)", rec.session_id, restore.worker_id, restore.epoch)
        self._scheduler.dispatch(rec)

    def drop(self, rec: SessionRecord) -> None:
        """The record was dropped after a failed write: its restore's offer timer is off."""
        if rec.restoring is not None and rec.restoring.timer is not None:
            rec.restoring.timer.cancel()
        self._restoring.pop(rec.session_id, None)
