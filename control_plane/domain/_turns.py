"""Turns: input in, the queue, idempotency keys, interrupts, and how a turn ends.

Owns each record's `turns` (`TurnBook`): the open turns, the queue of turns waiting for a
worker, the active turn (offered or running) and the idempotency keys of the open turns. The
scheduler moves a turn between queued and offered only through `take_next`, `withdraw` and
`requeue`; accepting an offer starts it (`start`); a turn ends here, with an event the control
plane writes (`end`) or with the worker's terminal event (`finish`).

Also owns the per-owner limits on turns, since they count queued and active turns, and the
index of busy sessions by owner that those limits (and the offer re-queue) walk: only sessions
with a turn queued, offered or running, never every loaded one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import errors
from ._shared import Committer, log
from .access import Limits
from .messages import InterruptMsg
from .model import InputPolicy, Turn, TurnState, new_id, now_us
from .ports import BodyCodec, Changes, Observer, SessionReader, TurnTracer

if TYPE_CHECKING:
    from ._deadlines import TurnDeadlines
    from ._log import EventLog
    from ._pending import PendingRequests
    from ._record import SessionRecord
    from ._scheduling import Scheduler
    from ._sessions import SessionCache
    from ._workers import Workers


# About how much text one ListTurns page carries (inputs may be 1 MiB each).
_PAGE_BYTES = 2 * 1024 * 1024


@dataclass
class TurnBook:
    turns: dict[str, Turn] = field(default_factory=dict)  # open turns only
    queue: collections.deque[str] = field(default_factory=collections.deque)
    active: Turn | None = None  # offered or running
    keys: dict[str, str] = field(default_factory=dict)  # idempotency key -> turn id
    # Turns whose input's commit is still in flight, with its future: they may be offered
    # meanwhile, but nothing grants one before its commit (Scheduler.accept), and a repeat of
    # their idempotency key is answered only once it is done.
    unstored: dict[str, asyncio.Future[None]] = field(default_factory=dict)

    @classmethod
    def reloaded(cls, open_turns: list[Turn]) -> TurnBook:
        """Open turns as stored: a running turn stays active; any other waits in the queue (an
        offer is not durable, so an offered turn is queued again)."""
        book = cls()
        for turn in open_turns:
            if turn.state == TurnState.RUNNING:
                book.active = turn
            else:
                turn.state = TurnState.QUEUED
                book.queue.append(turn.turn_id)
            book.turns[turn.turn_id] = turn
            if turn.idempotency_key:
                book.keys[turn.idempotency_key] = turn.turn_id
        return book


class Turns:
    def __init__(
        self,
        reader: SessionReader,
        committer: Committer,
        codec: BodyCodec,
        limits: Limits,
        observer: Observer,
        tracer: TurnTracer,
    ) -> None:
        self._reader = reader
        self._committer = committer
        self._codec = codec
        self._limits = limits
        self._observer = observer
        self._tracer = tracer
        # owner -> the loaded records with a turn queued, offered or running
        self._busy: dict[str, dict[str, SessionRecord]] = {}

    def connect(
        self,
        *,
        sessions: SessionCache,
        events: EventLog,
        scheduler: Scheduler,
        workers: Workers,
        requests: PendingRequests,
        deadlines: TurnDeadlines,
    ) -> None:
        self._sessions = sessions
        self._events = events
        self._scheduler = scheduler
        self._workers = workers
        self._requests = requests
        self._deadlines = deadlines

    # ----------------------------------------------------------------- what others ask

    def busy(self, rec: SessionRecord) -> bool:
        """Whether a turn is queued, offered or running."""
        return bool(rec.turns.active or rec.turns.queue)

    def ready(self, rec: SessionRecord) -> bool:
        """Whether a queued turn waits and none is offered or running: one to dispatch."""
        return rec.turns.active is None and bool(rec.turns.queue)

    def current_turn_id(self, rec: SessionRecord) -> str:
        """The active turn, else the next queued one, else ""."""
        book = rec.turns
        return book.active.turn_id if book.active else (book.queue[0] if book.queue else "")

    def waiting_reason(self, rec: SessionRecord) -> str:
        """Why the session's next queued turn waits for a worker ("" when nothing says)."""
        book = rec.turns
        if book.active is None and book.queue:
            return book.turns[book.queue[0]].waiting_reason
        return ""

    def next_queued(self, rec: SessionRecord) -> Turn | None:
        book = rec.turns
        return book.turns[book.queue[0]] if book.queue else None

    def active(self, rec: SessionRecord) -> Turn | None:
        return rec.turns.active

    def offered(self, rec: SessionRecord) -> Turn | None:
        turn = rec.turns.active
        return turn if turn is not None and turn.state == TurnState.OFFERED else None

    def running(self, rec: SessionRecord) -> Turn | None:
        turn = rec.turns.active
        return turn if turn is not None and turn.state == TurnState.RUNNING else None

    def has_open(self, rec: SessionRecord) -> bool:
        """Whether any turn of the session is open (queued, offered or running)."""
        return bool(rec.turns.turns) or self.busy(rec)

    def queued(self) -> tuple[int, int]:
        """How many turns wait in a queue, and when the oldest of them was queued (a `now_us()`
        reading; 0 when none waits). Walks only the busy sessions."""
        count = oldest = 0
        for busy in self._busy.values():
            for rec in busy.values():
                book = rec.turns
                if book.queue:
                    count += len(book.queue)
                    created = book.turns[book.queue[0]].create_time_us
                    oldest = created if not oldest else min(oldest, created)
        return count, oldest

    def busy_records(self, owner: str | None = None) -> list[SessionRecord]:
        """The loaded records with a turn queued, offered or running (`owner`'s, or everyone's)."""
        if owner is not None:
            return list(self._busy.get(owner, {}).values())
        return [rec for busy in self._busy.values() for rec in busy.values()]

    # ----------------------------------------------------------------- the index of busy sessions

    def loaded(self, rec: SessionRecord) -> None:
        """The session cache keeps `rec` (made new or reloaded): index it if it is busy."""
        self._track(rec)

    def forgotten(self, rec: SessionRecord) -> None:
        """The session cache dropped `rec`: it leaves the index. Open turns of a dropped record
        (deleted, or dropped after a failed write) end nowhere else: their traces end here."""
        self._untrack(rec)
        for turn in rec.turns.turns.values():
            self._tracer.abandoned(turn)

    def _track(self, rec: SessionRecord) -> None:
        if self.busy(rec) and not rec.deleted:
            self._busy.setdefault(rec.session.owner, {})[rec.session_id] = rec
        else:
            self._untrack(rec)

    def _untrack(self, rec: SessionRecord) -> None:
        busy = self._busy.get(rec.session.owner)
        if busy is not None and busy.get(rec.session_id) is rec:
            del busy[rec.session_id]
            if not busy:
                del self._busy[rec.session.owner]

    # ----------------------------------------------------------------- what the scheduler does

    def take_next(self, rec: SessionRecord) -> Turn:
        """The next queued turn leaves the queue as the session's offered turn."""
        book = rec.turns
        turn = book.turns[book.queue.popleft()]
        turn.state = TurnState.OFFERED
        turn.waiting_reason, turn.waiting_cause, turn.waiting_since = "", "", 0.0
        book.active = turn
        return turn

    def traced_offer(self, turn: Turn, worker_id: str, epoch: int) -> tuple[tuple[str, str], ...]:
        """The trace context headers an offer of `turn` carries (none when turns are not traced)."""
        return tuple(self._tracer.offered(turn, worker_id, epoch).items())

    def withdraw(self, rec: SessionRecord) -> Turn | None:
        """An offered turn that no worker took is queued again (not yet back in the queue)."""
        turn = self.offered(rec)
        if turn is not None:
            self._tracer.withdrawn(turn)
            turn.state = TurnState.QUEUED
            rec.turns.active = None
            self._track(rec)
        return turn

    def requeue(self, rec: SessionRecord, turn: Turn) -> None:
        """`turn` goes back to the front of the queue."""
        rec.turns.queue.appendleft(turn.turn_id)
        self._track(rec)

    def start(self, rec: SessionRecord, turn: Turn, worker_id: str, epoch: int, changes: Changes) -> None:
        """The worker accepted the offer: the turn runs there under the lease at `epoch`."""
        turn.state = TurnState.RUNNING
        turn.worker_id = worker_id
        turn.lease_epoch = epoch
        turn.start_time_us = now_us()
        changes.turn_updates.append(turn)
        self._deadlines.started(rec, turn)
        self._observer.turn_started((turn.start_time_us - turn.create_time_us) / 1e6)
        self._tracer.accepted(turn)

    def unstart(self, rec: SessionRecord, turn: Turn) -> Changes:
        """A running turn whose worker never began it (a turn granted with its offer when the
        worker gave the session back as the offer crossed, or one whose grant went down with
        a Lease stream): queued again at the front, to be offered anew; the caller commits."""
        self._deadlines.ended(turn)
        self._workers.free_slot(turn.worker_id, turn.turn_id)
        turn.state = TurnState.QUEUED
        turn.worker_id = ""
        turn.lease_epoch = 0
        turn.start_time_us = 0
        rec.turns.active = None
        rec.offer.granted_turn = ""
        self.requeue(rec, turn)
        changes = Changes(turn_updates=[turn])
        changes.on_commit.append(lambda: self._scheduler.dispatch(rec))
        return changes

    # ----------------------------------------------------------------- calls

    async def send_input(
        self,
        owner: str,
        session_id: str,
        text: str,
        key: str,
        policy: InputPolicy = InputPolicy.ENQUEUE,
        output_schema: str = "",
        trace_context: Mapping[str, str] | None = None,
    ) -> tuple[Turn, bool]:
        rec = await self._sessions.require(session_id, owner)
        if key:
            existing = await self._turn_for_key(rec, key)
            if existing is not None:
                if existing.input != text:
                    raise errors.IdempotencyKeyReused(
                        f"idempotency key {key!r} was used for turn {existing.turn_id} with "
                        "different input; use a new key for new input",
                        turn_id=existing.turn_id,
                    )
                unstored = rec.turns.unstored.get(existing.turn_id)
                if unstored is not None:  # the first call's commit is in flight: answer as it will
                    await self._committer.wait(asyncio.shield(unstored))
                return existing, True
            if rec.deleted:
                raise errors.SessionNotFound(session_id)
        if rec.session.archived:
            raise errors.SessionArchived(
                f"session {session_id!r} is archived and accepts no input", session_id=session_id
            )
        runtime = rec.session.runtime
        if output_schema and self._workers.honours_output_schema(owner, runtime) is False:
            raise errors.OutputSchemaUnsupported(
                f"runtime {runtime!r} on the connected workers cannot honour an output schema; send the input "
                "without one, or connect a worker whose runtime can (codex can)",
                runtime=runtime,
            )
        # From here to the commit nothing awaits: of two racing calls, the second sees the first's
        # turn (a REJECT is refused, an INTERRUPT interrupts it).
        changes = Changes()
        if self.busy(rec):
            if policy == InputPolicy.REJECT:
                busy = self.current_turn_id(rec)
                raise errors.SessionBusy(
                    f"session {session_id!r} has a turn queued or running ({busy}) and the input's policy is "
                    "reject; wait for it to end, interrupt it, or send with policy enqueue or interrupt",
                    session_id=session_id,
                    turn_id=busy,
                )
            if policy == InputPolicy.INTERRUPT:
                changes = self._interrupt_all(rec, "interrupted by new input (policy interrupt)")
        self._check_owner_limits(rec)
        now = now_us()
        turn = Turn(
            turn_id=new_id("trn"),
            session_id=session_id,
            ordinal=self._sessions.count_turn(rec, text, now, changes),
            input=text,
            state=TurnState.QUEUED,
            create_time_us=now,
            idempotency_key=key,
            output_schema=output_schema,
        )
        book = rec.turns
        book.turns[turn.turn_id] = turn
        book.queue.append(turn.turn_id)
        if key:
            book.keys[key] = turn.turn_id
        self._track(rec)
        event = self._events.own_event(rec, turn.turn_id, "input_received", self._codec.input_received(text))
        turn.first_seq = event.seq
        changes.turn_inserts.append(turn)
        changes.event_inserts.append(event)
        # Traced from now: the offer may be made before the commit, to go out with it (a failed
        # write drops the record, which ends its turns' traces).
        self._tracer.queued(turn, runtime, trace_context)
        changes.on_commit.append(lambda: self._events.published(rec, [event]))
        # A turn for the session's warm holder starts in this commit and its offer carries
        # the grant. Any other is offered now, while its commit is in flight: the offer and its
        # AcceptOffer travel meanwhile, and the grant waits for the commit (Scheduler.accept),
        # so no worker runs it before it is durable.
        granted = self._scheduler.dispatch_with_commit(rec, changes)
        stored = self._committer.submit(changes)
        book.unstored[turn.turn_id] = stored
        if not granted:
            try:
                self._scheduler.dispatch(rec)
            except Exception:  # the turn is decided: it commits whatever dispatching found
                log.exception("dispatching turn %s before its commit failed", turn.turn_id)
        try:
            # Shielded: a caller that goes away (its RPC cancelled) must not cancel the future
            # that AcceptOffer and repeats of the key wait on; the commit happens anyway.
            await self._committer.wait(asyncio.shield(stored))
        finally:
            book.unstored.pop(turn.turn_id, None)
        log.debug("turn %s queued", turn.turn_id, extra={"session_id": session_id, "turn_id": turn.turn_id})
        return turn, False

    def _ask_to_stop(self, rec: SessionRecord, turn: Turn, reason: str, changes: Changes) -> None:
        """Send the running turn's worker an interrupt once `changes` commit, and start the grace.

        A turn is RUNNING from the moment its worker accepted, but its grant reaches the worker
        only once the accept commits; pushed in commit order, the interrupt always follows the
        grant, so the worker never drops it as one for a turn it does not run.
        """
        holder = self._workers.get(turn.worker_id)
        if holder is not None:
            message = InterruptMsg(rec.session_id, turn.turn_id, reason)
            changes.on_commit.append(lambda: holder.push(message))
        self._deadlines.interrupted(rec, turn, reason)

    def _interrupt_all(self, rec: SessionRecord, reason: str) -> Changes:
        """End every queued or offered turn now and ask the worker to stop the running one (it
        ends when the worker stops it, or at the interrupt grace); the caller commits."""
        book = rec.turns
        changes = Changes()
        active = book.active
        if active is not None and active.state == TurnState.RUNNING:
            self._ask_to_stop(rec, active, reason, changes)
        elif active is not None:  # offered, not yet accepted: it never ran
            self._scheduler.withdraw_offer(rec)
            changes.absorb(self.end(rec, active, TurnState.INTERRUPTED, reason))
        for turn_id in list(book.queue):
            book.queue.remove(turn_id)
            changes.absorb(self.end(rec, book.turns[turn_id], TurnState.INTERRUPTED, reason))
        self._track(rec)
        return changes

    def _check_owner_limits(self, rec: SessionRecord) -> None:
        """Refuse a new turn past the owner's limits; other owners' work is never counted."""
        limits = self._limits
        active = queued = 0
        for other in self.busy_records(rec.session.owner):  # only busy sessions count
            if other.deleted:
                continue
            queued += len(other.turns.queue)
            active += 1
        if queued >= limits.max_queued_turns_per_owner:
            raise errors.LimitExceeded(
                "max_queued_turns_per_owner",
                limits.max_queued_turns_per_owner,
                f"{queued} turns of this owner are waiting for a worker; wait for some to start",
            )
        if not self.busy(rec) and active >= limits.max_active_sessions_per_owner:
            raise errors.LimitExceeded(
                "max_active_sessions_per_owner",
                limits.max_active_sessions_per_owner,
                f"{active} sessions of this owner have a turn queued or running; wait for one to finish",
            )

    async def _turn_for_key(self, rec: SessionRecord, key: str) -> Turn | None:
        book = rec.turns
        turn_id = book.keys.get(key)
        if turn_id is None:
            found = await self._reader.find_turn_by_key(rec.session_id, key)
            # Re-check after the await: a concurrent call may have stored the key meanwhile.
            turn_id = book.keys.get(key)
            if turn_id is None:
                return found
        return book.turns.get(turn_id) or await self._reader.get_turn(rec.session_id, turn_id)

    async def get_turn(self, owner: str, session_id: str, turn_id: str) -> Turn:
        rec = await self._sessions.require(session_id, owner)
        turn = rec.turns.turns.get(turn_id) or await self._reader.get_turn(session_id, turn_id)
        if turn is None:
            raise errors.TurnNotFound(session_id, turn_id)
        return turn

    async def list_turns(
        self, owner: str, session_id: str, page_size: int, after_ordinal: int, descending: bool
    ) -> tuple[list[Turn], int | None]:
        """One page of the session's turns by ordinal and, when more follow, the ordinal the
        next page starts after. A page also ends once it holds `_PAGE_BYTES` of inputs and
        messages (never before its first turn), so a page of long inputs fits one response."""
        rec = await self._sessions.require(session_id, owner)
        stored = await self._reader.list_turns(session_id, page_size + 1, after_ordinal, descending)
        more = len(stored) > page_size
        page: list[Turn] = []
        budget = _PAGE_BYTES
        for turn in stored[:page_size]:
            # Memory is the truth for an open turn (an offer, an interrupt asked for, a wait).
            turn = rec.turns.turns.get(turn.turn_id) or turn
            cost = len(turn.input) + len(turn.final_message) + len(turn.error_message) + len(turn.usage)
            if page and cost > budget:
                more = True
                break
            page.append(turn)
            budget -= cost
        return page, (page[-1].ordinal if more and page else None)

    async def interrupt_turn(self, owner: str, session_id: str, turn_id: str, reason: str) -> Turn:
        rec = await self._sessions.require(session_id, owner)
        book = rec.turns
        if not turn_id:
            turn_id = self.current_turn_id(rec)
            if not turn_id:
                raise errors.NoActiveTurn(
                    f"session {session_id!r} has no queued or running turn to interrupt", session_id=session_id
                )
        turn = book.turns.get(turn_id)
        if turn is None:
            stored = await self._reader.get_turn(session_id, turn_id)
            if stored is None:
                raise errors.TurnNotFound(session_id, turn_id)
            raise errors.TurnAlreadyEnded(
                f"turn {turn_id!r} already ended ({stored.state.name.lower()})", turn_id=turn_id
            )
        reason = reason or "interrupted by request"
        if turn.state == TurnState.RUNNING:
            changes = Changes()
            self._ask_to_stop(rec, turn, reason, changes)
            # Returned RUNNING with interrupt_time_us set: the worker ends it, or the control
            # plane does after the interrupt grace.
            await self._committer.commit(changes)
            return turn
        # Queued, or offered but not yet accepted: it never ran, so end it here.
        if turn.state == TurnState.OFFERED:
            self._scheduler.withdraw_offer(rec)
        if turn_id in book.queue:
            book.queue.remove(turn_id)
            self._track(rec)
        await self._committer.commit(self.end(rec, turn, TurnState.INTERRUPTED, reason))
        return turn

    # ----------------------------------------------------------------- endings

    def fail_queued(self, rec: SessionRecord, turn: Turn, why: str) -> Changes:
        """A queued turn fails without running (no worker could take it); the caller commits."""
        book = rec.turns
        if turn.turn_id in book.queue:
            book.queue.remove(turn.turn_id)
            self._track(rec)
        return self.end(rec, turn, TurnState.FAILED, why)

    def end(self, rec: SessionRecord, turn: Turn, state: TurnState, why: str, *, worker_lost: bool = False) -> Changes:
        """End a turn with an event the control plane writes itself; the caller commits."""
        turn.state = state
        turn.end_time_us = now_us()
        turn.error_message = why
        self._close(rec, turn)
        self._workers.free_slot(turn.worker_id, turn.turn_id)
        interrupted = state == TurnState.INTERRUPTED
        changes = Changes(turn_updates=[turn])
        self._sessions.touch(rec, turn.end_time_us, changes)
        # Unanswered requests expire first: the terminal event is the turn's last.
        expired = self._requests.expire(rec, turn.turn_id, f"its turn ended: {why}", changes)
        body = self._codec.turn_interrupted(why) if interrupted else self._codec.turn_failed(why, worker_lost)
        event = self._events.own_event(rec, turn.turn_id, "turn_interrupted" if interrupted else "turn_failed", body)
        turn.last_seq = event.seq
        events = [*expired, event]
        changes.event_inserts = events
        changes.on_commit.append(lambda: self._events.published(rec, events))
        changes.on_commit.append(lambda: self._scheduler.dispatch(rec))
        return changes

    def finish(
        self, rec: SessionRecord, turn: Turn, state: TurnState, exit_code: int, message: str, now: int, changes: Changes
    ) -> None:
        """End a turn with the terminal event its worker wrote (stored in `changes` already)."""
        turn.state = state
        turn.end_time_us = now
        turn.exit_code = exit_code
        turn.error_message = message
        self._close(rec, turn)
        changes.turn_updates.append(turn)

    def _close(self, rec: SessionRecord, turn: Turn) -> None:
        self._deadlines.ended(turn)
        ran_s = (turn.end_time_us - turn.start_time_us) / 1e6 if turn.start_time_us else None
        self._observer.turn_ended(rec.session.runtime, turn.state.name.lower(), ran_s)
        self._tracer.ended(turn)
        if log.isEnabledFor(logging.DEBUG):
            ids = {"session_id": rec.session_id, "turn_id": turn.turn_id, "owner": rec.session.owner}
            log.debug("turn %s %s", turn.turn_id, turn.state.name.lower(), extra=ids)
        book = rec.turns
        book.turns.pop(turn.turn_id, None)
        if book.active is turn:
            book.active = None
        self._track(rec)
