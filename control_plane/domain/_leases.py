"""Leases and fencing: who may write for a session, at which epoch, until when.

Owns each record's `lease` (`LeaseBook`: the lease, its monotonic deadline, and the highest
worker_seq accepted under it), the index of held leases by worker (so the sweeper and a
worker's attach walk only sessions that are leased, never every loaded one), the lease
sweeper, and the count of calls fencing refused.

Fencing: every worker write names (session, lease epoch). Only the current holder at the
current epoch may write; anything else is `LeaseLost`. Moving a session to another worker
bumps its epoch, so a worker that lost a lease can never append again. A turn never stays
running without a live lease: dropping the lease ends it as failed in the same transaction.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import errors
from ._shared import Committer, Tasks, log
from .messages import RenewedMsg, RevokeMsg, Timings
from .model import Lease, TurnState, now_us
from .ports import Changes, LeaseMove, Observer

if TYPE_CHECKING:
    from ._record import SessionRecord
    from ._restore import Restores
    from ._scheduling import Scheduler
    from ._sessions import SessionCache
    from ._turns import Turns
    from ._workers import WorkerConn, Workers


@dataclass
class LeaseBook:
    lease: Lease | None = None
    expires: float = 0.0  # time.monotonic() deadline
    acked_worker_seq: int = 0  # highest worker_seq accepted under the current lease epoch
    # Under the current epoch, where each turn's events start: (first worker_seq, turn id), in
    # order. Lets a resent event be checked against the turn it claims (Ingest).
    turn_marks: list[tuple[int, str]] = field(default_factory=list)
    granted_at: float = 0.0  # time.monotonic() of a grant whose holder has not rehydrated yet

    @classmethod
    def reloaded(cls, lease: Lease | None, last_worker_seq: int, ttl_s: float) -> LeaseBook:
        book = cls(lease)
        if lease is not None:
            book.acked_worker_seq = last_worker_seq
            if lease.worker_id:
                book.expires = time.monotonic() + ttl_s
        return book


class Leases:
    def __init__(self, committer: Committer, tasks: Tasks, timings: Timings, observer: Observer) -> None:
        self._committer = committer
        self._tasks = tasks
        self._timings = timings
        self._observer = observer
        # Calls refused by fencing, per worker: a worker that keeps writing for a lease it lost
        # is a zombie, and this is how the conformance kit sees one.
        self._fenced_calls: collections.Counter[str] = collections.Counter()
        # worker id -> the loaded records whose lease it holds (records whose lease has a holder)
        self._held: dict[str, dict[str, SessionRecord]] = {}

    def connect(
        self,
        *,
        sessions: SessionCache,
        workers: Workers,
        turns: Turns,
        restores: Restores,
        scheduler: Scheduler,
    ) -> None:
        self._sessions = sessions
        self._workers = workers
        self._turns = turns
        self._restores = restores
        self._scheduler = scheduler

    # ----------------------------------------------------------------- what others ask

    def holder(self, rec: SessionRecord) -> str:
        """The worker holding the session's lease, or ""."""
        lease = rec.lease.lease
        return lease.worker_id if lease else ""

    def epoch(self, rec: SessionRecord) -> int:
        """The lease's epoch (kept when a lease is freed), 0 for a session never leased."""
        lease = rec.lease.lease
        return lease.epoch if lease else 0

    def unexpired(self, rec: SessionRecord, now: float) -> bool:
        return now < rec.lease.expires

    def held_at(self, rec: SessionRecord, epoch: int) -> bool:
        """Whether some worker holds the lease at `epoch`."""
        lease = rec.lease.lease
        return lease is not None and lease.epoch == epoch and bool(lease.worker_id)

    def acked_worker_seq(self, rec: SessionRecord) -> int:
        return rec.lease.acked_worker_seq

    def ack(self, rec: SessionRecord, worker_seq: int) -> None:
        """The holder's events up to `worker_seq` are accepted under the current epoch."""
        rec.lease.acked_worker_seq = worker_seq

    def mark_turn(self, rec: SessionRecord, first_worker_seq: int, turn_id: str) -> None:
        """Events from `first_worker_seq` on (until the next mark) belong to `turn_id`."""
        marks = rec.lease.turn_marks
        if not marks or marks[-1][1] != turn_id:
            marks.append((first_worker_seq, turn_id))
            if len(marks) > 64:  # a resend never reaches that far back
                del marks[:32]

    def turn_at(self, rec: SessionRecord, worker_seq: int) -> str | None:
        """The turn whose event was accepted as `worker_seq` under the current epoch; None when
        not known here (accepted before this process loaded the session, or long ago)."""
        marks = rec.lease.turn_marks
        if not marks or worker_seq < marks[0][0]:
            return None
        i = bisect.bisect_right(marks, worker_seq, key=lambda m: m[0]) - 1
        return marks[i][1]

    def fenced_calls(self, worker_id: str) -> int:
        """How many of the worker's writes, resumes and snapshots fencing refused (LEASE_LOST)."""
        return self._fenced_calls[worker_id]

    def held_by(self, worker_id: str) -> list[SessionRecord]:
        """The loaded records whose lease `worker_id` holds."""
        return list(self._held.get(worker_id, {}).values())

    def leased(self) -> list[SessionRecord]:
        """Every loaded record whose lease some worker holds."""
        return [rec for held in self._held.values() for rec in held.values()]

    # ----------------------------------------------------------------- the index of held leases

    def loaded(self, rec: SessionRecord) -> None:
        """The session cache keeps `rec` (made new or reloaded): index its lease."""
        self._index(rec, "", self.holder(rec))

    def forgotten(self, rec: SessionRecord) -> None:
        """The session cache dropped `rec`: it leaves the index."""
        self._index(rec, self.holder(rec), "")

    def _set(self, rec: SessionRecord, lease: Lease) -> None:
        self._index(rec, self.holder(rec), lease.worker_id)
        rec.lease.lease = lease

    def _index(self, rec: SessionRecord, old: str, new: str) -> None:
        if old and old != new:
            held = self._held.get(old)
            if held is not None and held.get(rec.session_id) is rec:
                del held[rec.session_id]
                if not held:
                    del self._held[old]
        if new:
            self._held.setdefault(new, {})[rec.session_id] = rec

    # ----------------------------------------------------------------- fencing

    def check(self, worker_id: str, session_id: str, epoch: int, owner: str) -> SessionRecord:
        """The session, if `worker_id` (of `owner`) holds its lease at `epoch`; else LeaseLost.
        For another owner's session the answer is the one for a session that does not exist."""
        rec = self._sessions.get(session_id)
        if rec is None or rec.deleted or rec.session.owner != owner:
            self._fenced_calls[worker_id] += 1
            raise errors.LeaseLost(session_id, epoch, 0)
        lease = rec.lease.lease
        if lease is None or lease.worker_id != worker_id or lease.epoch != epoch:
            self._fenced_calls[worker_id] += 1
            raise errors.LeaseLost(session_id, epoch, lease.epoch if lease else 0)
        return rec

    async def load_and_check(self, worker_id: str, session_id: str, epoch: int, owner: str) -> SessionRecord:
        """Like check, but loads the session first (after a control-plane restart)."""
        await self._sessions.load(session_id)
        return self.check(worker_id, session_id, epoch, owner)

    # ----------------------------------------------------------------- granting and renewing

    def grant(self, rec: SessionRecord, w: WorkerConn, epoch: int, changes: Changes, why_moved: str) -> None:
        """Give `w` the session's lease at `epoch` (renewing it if `w` already holds that epoch);
        a previous holder is revoked. The durable part is added to `changes`."""
        session_id = rec.session_id
        book = rec.lease
        lease = book.lease
        if lease is None or lease.epoch != epoch or lease.worker_id != w.info.worker_id:
            holder = self.holder(rec)
            previous = self._workers.get(holder)
            if previous is not None and previous is not w:
                previous.let_go(session_id)
                previous.push(RevokeMsg(session_id, lease.epoch if lease else 0, why_moved))
            restore = self._restores.in_progress(rec)
            self._observer.lease_granted("restore" if restore else "turn")
            if holder and holder != w.info.worker_id:
                self._observer.lease_moved("restore" if restore else "reassigned")
            granted = Lease(session_id, w.info.worker_id, epoch, now_us())
            self._set(rec, granted)
            book.acked_worker_seq = 0
            book.turn_marks.clear()
            book.granted_at = time.monotonic()
            changes.lease_upserts.append(granted)
        book.expires = time.monotonic() + self._timings.lease_ttl_s
        w.hold(session_id, epoch)

    def rehydrated(self, rec: SessionRecord, *, restore: bool = False) -> None:
        """The holder's runtime is up under its grant (its first write, or the snapshot that
        confirms a restore): reported once per grant, with the time it took."""
        book = rec.lease
        if not book.granted_at:
            return
        first = book.lease is not None and book.lease.epoch == 1
        kind = "restore" if restore else ("start" if first else "move")
        self._observer.rehydrated(kind, time.monotonic() - book.granted_at)
        book.granted_at = 0.0

    def renew_held(self, w: WorkerConn, held: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Extend the leases `w` says it holds; returns those it no longer has."""
        lost = []
        deadline = time.monotonic() + self._timings.lease_ttl_s
        for session_id, epoch in held:
            rec = self._sessions.get(session_id)
            lease = rec.lease.lease if rec is not None else None
            if (
                rec is None
                or rec.deleted
                or lease is None
                or lease.worker_id != w.info.worker_id
                or lease.epoch != epoch
            ):
                lost.append((session_id, epoch))
                continue
            rec.lease.expires = deadline
            w.hold(session_id, epoch)
        return lost

    def renew(
        self,
        worker_id: str,
        registration_id: str,
        held: list[tuple[str, int]],
        digest: tuple[int, int] | None = None,
    ) -> RenewedMsg:
        """Renew the leases `held` lists, or with `digest` (count, xor) every lease the worker's
        stream holds when the digest names exactly those; else ask for the list (resync)."""
        w = self._workers.require(worker_id, registration_id)
        expire_us = now_us() + int(self._timings.lease_ttl_s * 1e6)
        if digest is None:
            return RenewedMsg(expire_us, self.renew_held(w, held))
        if not w.digest_matches(*digest):
            return RenewedMsg(expire_us, [], resync=True)
        deadline = time.monotonic() + self._timings.lease_ttl_s
        for rec in self.held_by(worker_id):
            if w.holds(rec.session_id):
                rec.lease.expires = deadline
        return RenewedMsg(expire_us, [])

    # ----------------------------------------------------------------- freeing

    async def release(self, worker_id: str, session_id: str, epoch: int, reason: str = "") -> None:
        rec = self._sessions.get(session_id)
        lease = rec.lease.lease if rec is not None else None
        if rec is None or lease is None or lease.worker_id != worker_id or lease.epoch != epoch:
            return  # a stale release: the lease is not the worker's at that epoch any more
        w = self._workers.get(worker_id)
        if w is not None:
            w.let_go(session_id)
        why = f"the worker released the session ({reason or 'no reason given'})"
        log.info("worker %s released session %s (epoch %d): %s", worker_id, session_id, epoch, reason or "no reason")
        await self.drop(rec, why, revoke=False, cause="released")

    def take_back(self, rec: SessionRecord, why: str, changes: Changes) -> None:
        """Free an idle session's lease now, with a revoke to its holder, the freed lease going
        into `changes` (the caller commits). The session must have no running turn and no
        restore under way; its next turn goes to any worker at the next epoch and rehydrates."""
        lease = rec.lease.lease
        if lease is None or not lease.worker_id:
            return
        w = self._workers.get(lease.worker_id)
        if w is not None:
            w.let_go(rec.session_id)
            w.push(RevokeMsg(rec.session_id, lease.epoch, why))
        freed = Lease(rec.session_id, "", lease.epoch, now_us())
        self._set(rec, freed)
        changes.lease_upserts.append(freed)
        self._observer.lease_moved("reverted")

    def drop_soon(self, rec: SessionRecord, why: str, task_name: str, *, cause: LeaseMove) -> None:
        """`drop` with a revoke, in a background task (from a callback that cannot await)."""
        self._tasks.spawn(self.drop(rec, why, revoke=True, cause=cause), task_name)

    async def drop(
        self,
        rec: SessionRecord,
        why: str,
        *,
        revoke: bool,
        cause: LeaseMove,
        ending: tuple[TurnState, str] | None = None,
    ) -> None:
        """Free the session's lease (keeping its epoch) so any worker may take it next.

        A turn never stays "running" without a live lease: it ends in the same transaction that
        frees the lease, as failed with its worker lost (`why`), or as `ending` says.
        """
        book = rec.lease
        lease = book.lease
        if lease is None or not lease.worker_id:
            return
        session_id = rec.session_id
        w = self._workers.get(lease.worker_id)
        if w is not None:
            w.let_go(session_id)
            if revoke:
                w.push(RevokeMsg(session_id, lease.epoch, why))
        freed = Lease(session_id, "", lease.epoch, now_us())
        self._set(rec, freed)
        self._observer.lease_moved(cause)
        self._restores.fail(
            rec,
            lease.epoch,
            errors.RehydrationFailed(
                f"worker {lease.worker_id!r} gave session {session_id!r} up before confirming it: {why}",
                session_id=session_id,
                worker_id=lease.worker_id,
            ),
        )
        turn = self._turns.running(rec)
        if turn is not None and cause == "released" and rec.offer.granted_turn == turn.turn_id:
            # Granted with its offer as the worker released the session: the worker does not
            # run an offer for a lease it gave back, so the turn has not begun anywhere.
            log.info(
                "turn %s of session %s was granted as its worker released it; queued again", turn.turn_id, session_id
            )
            changes = self._turns.unstart(rec, turn)
        elif turn is not None and ending is not None:
            changes = self._turns.end(rec, turn, *ending)
        elif turn is not None:
            message = f"the turn's worker {lease.worker_id} was lost: {why}"
            changes = self._turns.end(rec, turn, TurnState.FAILED, message, worker_lost=True)
        else:
            changes = Changes()
            changes.on_commit.append(lambda: self._scheduler.dispatch(rec))
        changes.lease_upserts.append(freed)
        await self._committer.commit(changes)
        if revoke:
            log.warning("lease of session %s (epoch %d) dropped: %s", session_id, lease.epoch, why)

    # ----------------------------------------------------------------- the sweeper

    def start_sweeper(self) -> None:
        self._tasks.spawn(self._sweep(), "tether-lease-sweeper")

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self._timings.lease_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for rec in self.leased():  # only leased sessions: idle ones cost the sweeper nothing
                if now >= rec.lease.expires and not rec.deleted:
                    try:
                        await self.drop(
                            rec, "the lease was not renewed before its deadline", revoke=True, cause="lease_expired"
                        )
                    except errors.DomainError:
                        log.exception("could not expire lease of %s", rec.session_id)
            self._scheduler.dispatch_waiting()
