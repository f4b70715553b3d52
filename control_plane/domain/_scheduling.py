"""Scheduling: which worker gets a session's next turn, and the life of the offer.

Owns each record's `offer` (`OfferBook`: to whom the turn is offered, at which epoch, the
offer timer, and since when the next turn waits for a busy warm holder) and the set of
sessions waiting for a worker. Rules:

- Sticky: the next turn goes to the lease holder, which keeps the warm runtime, at the same
  epoch. It waits for the holder while the holder is busy, up to `sticky_timeout_s`; for a
  holder that went away, until the worker-dead grace or the lease expiry moves the session.
- Otherwise it goes to the eligible worker (same owner, runtime, labels, connected, not
  draining) with the most free slots, at the next epoch, and rehydrates there.
- An offer not accepted within `offer_timeout_s` is queued again. Accepting grants the lease.
- A turn that no connected worker can take (none offers the runtime, has the selector's
  labels, or is not draining) says why: the turn's `waiting_reason` and a `turn_waiting` event,
  once a reason has held for `waiting_notice_s` (a worker still connecting does not count) and
  again when it changes. With `queue_timeout_s` it fails NO_WORKER after that long.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._shared import Committer, log
from .messages import GrantMsg, OfferMsg, RevokeMsg, Timings
from .model import Session, now_us
from .ports import BodyCodec, Changes

#: The RegisterRequest feature of a worker that runs an offer carrying its grant without
#: accepting it (`Offer.granted`).
GRANTED_OFFER = "granted_offer"

if TYPE_CHECKING:
    from ._leases import Leases
    from ._log import EventLog
    from ._record import SessionRecord
    from ._restore import Restores
    from ._sessions import SessionCache
    from ._turns import Turns
    from ._workers import WorkerConn, Workers


@dataclass
class OfferBook:
    offered_to: str = ""
    epoch: int = 0
    timer: asyncio.TimerHandle | None = None
    sticky_since: float = 0.0  # when the next turn started waiting for a busy holder
    # The turn granted with its offer that its worker has not written for yet ("" when none).
    granted_turn: str = ""


class Scheduler:
    def __init__(self, committer: Committer, timings: Timings, codec: BodyCodec) -> None:
        self._committer = committer
        self._timings = timings
        self._codec = codec
        self._waiting: dict[str, None] = {}  # sessions with a queued turn and no worker yet

    def connect(
        self,
        *,
        sessions: SessionCache,
        turns: Turns,
        leases: Leases,
        restores: Restores,
        workers: Workers,
        events: EventLog,
    ) -> None:
        self._sessions = sessions
        self._turns = turns
        self._leases = leases
        self._restores = restores
        self._workers = workers
        self._events = events

    # ----------------------------------------------------------------- choosing a worker

    def _eligible(self, w: WorkerConn, session: Session, schema: bool = False) -> bool:
        info = w.info
        return (
            info.owner == session.owner  # a worker only ever sees its owner's work
            and w.connected
            and not w.draining
            and session.runtime in info.runtimes
            and (not schema or session.runtime in info.output_schema_runtimes)
            and all(info.labels.get(k) == v for k, v in session.worker_selector.items())
        )

    def most_free(
        self,
        session: Session,
        selector: dict[str, str] | None = None,
        *,
        only: str = "",
        exclude: str = "",
        schema: bool = False,
    ) -> WorkerConn | None:
        """The eligible worker with a free slot and the most of them (also matching `selector`,
        being `only` when given, not being `exclude`, and honouring output schemas when
        `schema`)."""
        best: WorkerConn | None = None
        for w in self._workers.all():
            wid = w.info.worker_id
            if (
                w.free_slots > 0
                and (best is None or w.free_slots > best.free_slots)
                and wid != exclude
                and (not only or wid == only)
                and self._eligible(w, session, schema)
                and all(w.info.labels.get(k) == v for k, v in (selector or {}).items())
            ):
                best = w
        return best

    # ----------------------------------------------------------------- dispatch

    def dispatch(self, rec: SessionRecord) -> None:
        """Offer the session's next queued turn to a worker, if it has one and one is free."""
        session_id = rec.session_id
        if rec.deleted or not self._turns.ready(rec):
            self._waiting.pop(session_id, None)
            return
        if self._restores.in_progress(rec):
            self._waiting[session_id] = None  # the restore's new holder takes the turn
            return
        holder_id = self._leases.holder(rec)
        now = time.monotonic()
        target: WorkerConn | None = None
        epoch = self._leases.epoch(rec)
        resume = True
        holder = self._workers.get(holder_id) if holder_id else None
        queued = self._turns.next_queued(rec)
        schema = queued is not None and bool(queued.output_schema)
        # A holder whose runtime cannot honour the turn's output schema is not waited for.
        can_stay = not schema or (holder is not None and rec.session.runtime in holder.info.output_schema_runtimes)
        if holder_id and can_stay and self._leases.unexpired(rec, now) and self._sticky(rec, holder, now):
            if holder is None or not holder.connected or holder.free_slots <= 0:
                # Sticky: the holder keeps the warm runtime; wait for it: for a slot, for it to
                # reconnect within the worker-dead grace, or until the sticky timeout.
                self._waiting[session_id] = None
                return
            target, resume = holder, False
        else:
            if self._pinned(rec, holder_id, holder, now):
                return
            best = self.most_free(rec.session, schema=schema)
            if best is None:
                self._waiting[session_id] = None
                self._note_waiting(rec, now)
                return
            target, epoch = best, epoch + 1
        self._offer(rec, target, epoch, resume)

    def dispatch_with_commit(self, rec: SessionRecord, changes: Changes) -> bool:
        """Before `changes` commit (SendInput's): when the session's next turn would go to its
        warm holder at the same epoch, and that holder takes granted offers, the turn starts in
        these changes and the offer, grant included, is pushed once they commit: one commit
        and one message, no AcceptOffer round. False, with nothing done, otherwise (the caller
        dispatches after its commit, as usual)."""
        if rec.deleted or not self._turns.ready(rec) or self._restores.in_progress(rec):
            return False
        holder_id = self._leases.holder(rec)
        holder = self._workers.get(holder_id) if holder_id else None
        queued = self._turns.next_queued(rec)
        if (
            holder is None
            or queued is None
            or not self._grants_with_offer(holder)
            or (queued.output_schema and rec.session.runtime not in holder.info.output_schema_runtimes)
        ):
            return False
        now = time.monotonic()
        if not (
            self._leases.unexpired(rec, now)
            and holder.connected
            and not holder.draining
            and holder.holds(rec.session_id)
            and holder.free_slots > 0
        ):
            return False
        self._offer(rec, holder, self._leases.epoch(rec), False, changes)
        return True

    def _offer(
        self, rec: SessionRecord, target: WorkerConn, epoch: int, resume: bool, changes: Changes | None = None
    ) -> None:
        """Offer the next queued turn to `target` at `epoch`. A sticky turn (no resume) for a
        worker that takes granted offers starts now and goes with its grant once that is
        durable (in `changes`' commit when given, else in its own); any other offer is pushed
        now and waits for AcceptOffer under the offer timer."""
        session_id = rec.session_id
        self._waiting.pop(session_id, None)
        offer = rec.offer
        offer.sticky_since = 0.0
        turn = self._turns.take_next(rec)
        offer.epoch = epoch
        worker_id = target.info.worker_id
        offer.offered_to = worker_id
        target.occupy(turn.turn_id)
        timeout = self._timings.offer_timeout_s
        now = now_us()
        msg = OfferMsg(
            session_id=session_id,
            turn_id=turn.turn_id,
            input=turn.input,
            runtime=rec.session.runtime,
            lease_epoch=epoch,
            resume_required=resume,
            last_seq=self._events.committed_seq(rec),
            accept_deadline_us=now + int(timeout * 1e6),
            output_schema=turn.output_schema,
            trace_context=self._turns.traced_offer(turn, worker_id, epoch),
        )
        if not resume and self._grants_with_offer(target):
            own = changes is None
            changes = Changes() if changes is None else changes
            self._leases.grant(rec, target, epoch, changes, "moved to another worker")
            self._turns.start(rec, turn, worker_id, epoch, changes)
            if any(t is turn for t in changes.turn_inserts):
                changes.turn_updates.remove(turn)  # inserted as running: nothing to update
            grant = GrantMsg(session_id, turn.turn_id, epoch, now + int(self._timings.lease_ttl_s * 1e6))
            granted = dataclasses.replace(msg, granted=grant)
            offer.granted_turn = turn.turn_id
            changes.on_commit.append(lambda: target.push(granted))
            if own:
                self._committer.submit(changes)
            return
        offer.timer = asyncio.get_running_loop().call_later(timeout, self._offer_expired, rec, turn.turn_id)
        target.push(msg)

    def _grants_with_offer(self, w: WorkerConn) -> bool:
        """Whether a sticky offer to `w` carries its grant: the policy is on and `w` takes it."""
        return self._timings.grant_with_offer and GRANTED_OFFER in w.info.features

    def _pinned(self, rec: SessionRecord, holder_id: str, holder: WorkerConn | None, now: float) -> bool:
        """A session whose runtime declares portability "none" and that has run on a worker
        (a lease epoch) never moves: while its holder is connected and holds the lease the next
        turn waits for it, however long; once the holder is gone, the queued turns fail
        RUNTIME_NOT_PORTABLE. True when dispatch stops here."""
        session = rec.session
        if (
            self._leases.epoch(rec) == 0
            or self._workers.portability(session.owner, session.runtime, holder_id) != "none"
        ):
            return False
        if holder is not None and holder.connected and holder_id and self._leases.unexpired(rec, now):
            self._waiting[rec.session_id] = None
            return True
        self._waiting.pop(rec.session_id, None)
        message = (
            f"RUNTIME_NOT_PORTABLE: runtime {session.runtime!r} declares portability none (its agent's "
            f"state stays with the worker that ran it), and that worker ({holder_id or 'its last holder'}) "
            "no longer holds this session, so no other worker can continue it; start a new session"
        )
        while (turn := self._turns.next_queued(rec)) is not None:
            log.warning("turn %s of session %s failed: %s", turn.turn_id, rec.session_id, message)
            self._committer.submit(self._turns.fail_queued(rec, turn, message))
        return True

    def _why_no_worker(self, session: Session, schema: bool = False) -> str:
        """Why no connected worker could ever take the session's turn as things stand ("" when
        one could, once it has a free slot)."""
        runtime, selector = session.runtime, session.worker_selector
        offers = labelled = honours = False
        for w in self._workers.all():
            info = w.info
            if info.owner != session.owner or not w.connected or runtime not in info.runtimes:
                continue
            offers = True
            if not all(info.labels.get(k) == v for k, v in selector.items()):
                continue
            labelled = True
            if schema and runtime not in info.output_schema_runtimes:
                continue
            honours = True
            if not w.draining:
                return ""
        labels = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
        if not offers:
            return f"no connected worker offers runtime {runtime!r}"
        if not labelled:
            return f"no connected worker offering runtime {runtime!r} has the labels {labels}"
        if not honours:
            return f"no connected worker's runtime {runtime!r} honours the turn's output schema"
        return f"every connected worker that could take it (runtime {runtime!r}) is draining"

    def _note_waiting(self, rec: SessionRecord, now: float) -> None:
        """The next queued turn found no worker: say why once the reason has held for the waiting
        notice, and when it changes; past the queue timeout, fail it NO_WORKER."""
        turn = self._turns.next_queued(rec)
        if turn is None:
            return
        why = self._why_no_worker(rec.session, bool(turn.output_schema))
        if why != turn.waiting_cause:
            turn.waiting_cause, turn.waiting_since = why, (now if why else 0.0)
        if why != turn.waiting_reason and (not why or now - turn.waiting_since >= self._timings.waiting_notice_s):
            turn.waiting_reason = why
            if why:
                log.info("turn %s of session %s waits: %s", turn.turn_id, rec.session_id, why)
                event = self._events.own_event(rec, turn.turn_id, "turn_waiting", self._codec.turn_waiting(why))
                changes = Changes(event_inserts=[event])
                changes.on_commit.append(lambda: self._events.published(rec, [event]))
                self._committer.submit(changes)
            return
        limit = self._timings.queue_timeout_s
        if why and limit > 0 and now - turn.waiting_since >= limit:
            self._waiting.pop(rec.session_id, None)
            message = f"NO_WORKER: {why} (waited {now - turn.waiting_since:.0f}s, past the server's queue timeout)"
            log.warning("turn %s of session %s failed: %s", turn.turn_id, rec.session_id, message)
            self._committer.submit(self._turns.fail_queued(rec, turn, message))

    def _sticky(self, rec: SessionRecord, holder: WorkerConn | None, now: float) -> bool:
        """Whether the next turn should wait for the lease holder rather than move."""
        if holder is None or not holder.connected:
            return True  # moved by the worker-dead grace or by lease expiry, not here
        if holder.draining or not holder.holds(rec.session_id):
            # Not confirmed by the holder's current stream (for example a worker restarted
            # while the control plane was down): it has no warm runtime, so the session moves
            # at the next epoch, possibly back to the same worker, which then rehydrates.
            return False
        if holder.free_slots > 0:
            return True
        offer = rec.offer
        if not offer.sticky_since:
            offer.sticky_since = now
        if now - offer.sticky_since < self._timings.sticky_timeout_s:
            return True
        log.info(
            "session %s waited %.1fs for its busy holder %s; moving it",
            rec.session_id,
            now - offer.sticky_since,
            holder.info.worker_id,
        )
        return False

    def wait(self, rec: SessionRecord) -> None:
        """The session waits for a worker: the next freed slot or the sweeper's next pass."""
        self._waiting[rec.session_id] = None

    def dispatch_waiting(self) -> None:
        for session_id in list(self._waiting):
            rec = self._sessions.get(session_id)
            if rec is None:
                self._waiting.pop(session_id, None)
                continue
            self.dispatch(rec)

    # ----------------------------------------------------------------- the offer

    def withdraw_offer(self, rec: SessionRecord) -> None:
        """Take back an offer no worker accepted; its turn is queued again (not re-queued)."""
        turn = self._turns.offered(rec)
        if turn is None:
            return
        offer = rec.offer
        if offer.timer:
            offer.timer.cancel()
            offer.timer = None
        self._workers.free_slot(offer.offered_to, turn.turn_id)
        offer.offered_to = ""
        self._turns.withdraw(rec)

    def _requeue_offer(self, rec: SessionRecord) -> None:
        """The offered turn goes back to the front of the queue; a turn that is not on offer
        (already accepted and running, or ended) is left alone."""
        turn = self._turns.offered(rec)
        if turn is None:
            return
        self.withdraw_offer(rec)
        self._turns.requeue(rec, turn)

    def _offer_expired(self, rec: SessionRecord, turn_id: str) -> None:
        turn = self._turns.offered(rec)
        if turn is not None and turn.turn_id == turn_id:
            log.warning("offer of turn %s to %s was not accepted in time; requeued", turn_id, rec.offer.offered_to)
            self._requeue_offer(rec)
            self.dispatch(rec)

    def requeue_offers_of(self, w: WorkerConn) -> None:
        """`w` takes nothing more: what was offered to it goes to another worker."""
        worker_id = w.info.worker_id
        self._restores.worker_gone(worker_id)
        for rec in self._turns.busy_records():  # an offered turn makes its session busy
            if self._turns.offered(rec) is not None and rec.offer.offered_to == worker_id:
                self._requeue_offer(rec)
                self.dispatch(rec)

    async def accept(self, worker_id: str, session_id: str, turn_id: str, epoch: int) -> None:
        w = self._workers.require(worker_id)
        rec = self._sessions.get(session_id)
        if not turn_id:
            await self._restores.accept(w, rec, session_id, epoch)
            return
        unstored = rec.turns.unstored.get(turn_id) if rec is not None else None
        if unstored is not None and not unstored.done():
            # Offered while its input's commit was in flight: nothing is granted before that
            # commit. If it fails, the failed write's recovery has dropped every record and
            # closed every Lease stream, so the worker forgets the accepted offer.
            await asyncio.wait({unstored})  # its outcome, without raising it here
            if unstored.cancelled() or unstored.exception() is not None:
                w.free(turn_id)
                return
            rec = self._sessions.get(session_id)  # what holds now, checked below
        turn = self._turns.offered(rec) if rec is not None else None
        if (
            rec is None
            or turn is None
            or turn.turn_id != turn_id
            or rec.offer.offered_to != worker_id
            or rec.offer.epoch != epoch
        ):
            w.free(turn_id)
            w.push(RevokeMsg(session_id, epoch, "the offer is no longer valid"))
            self.dispatch_waiting()
            return
        offer = rec.offer
        if offer.timer:
            offer.timer.cancel()
            offer.timer = None
        changes = Changes()
        now = now_us()
        self._leases.grant(rec, w, epoch, changes, "moved to another worker")
        self._turns.start(rec, turn, worker_id, epoch, changes)
        grant = GrantMsg(session_id, turn_id, epoch, now + int(self._timings.lease_ttl_s * 1e6))
        changes.on_commit.append(lambda: w.push(grant))
        await self._committer.commit(changes)

    def reject(self, worker_id: str, session_id: str, turn_id: str, reason: str) -> None:
        rec = self._sessions.get(session_id)
        if not turn_id:
            if rec is not None:
                self._restores.reject(rec, worker_id, reason)
            return
        # Only the turn on offer to this worker: a repeat offer rejected after the worker
        # accepted an earlier one (its turn runs now) or after it was withdrawn changes nothing.
        offered = self._turns.offered(rec) if rec is not None else None
        if rec is None or offered is None or offered.turn_id != turn_id or rec.offer.offered_to != worker_id:
            log.debug("worker %s rejected turn %s, which is not on offer to it; ignored", worker_id, turn_id)
            return
        log.info("worker %s rejected turn %s: %s", worker_id, turn_id, reason or "no reason")
        self._requeue_offer(rec)
        # Not re-offered at once: the rejecting worker may be the sticky holder and would get
        # it straight back. It waits for the next freed slot or the sweeper's next pass.
        self._waiting[session_id] = None

    # ----------------------------------------------------------------- sessions going away

    def forget(self, rec: SessionRecord) -> None:
        """The session is deleted: it waits for nothing and its offer timer is off."""
        self._waiting.pop(rec.session_id, None)
        if rec.offer.timer:
            rec.offer.timer.cancel()

    def reset(self, dropped: list[SessionRecord]) -> None:
        """Every record was dropped after a failed write: no timers, nothing waiting."""
        for rec in dropped:
            if rec.offer.timer:
                rec.offer.timer.cancel()
        self._waiting.clear()
