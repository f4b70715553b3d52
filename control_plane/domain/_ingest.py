"""Ingest: a worker's batch of events, fenced, deduplicated, numbered and queued to commit.

Owns each record's `events_bucket` (the events-per-second limit of the session). A batch is
decided in one synchronous step: the lease must be the caller's at its epoch (Leases),
`worker_seq` must continue the accepted watermark with no gap (a resent prefix is dropped
as a duplicate), every event must belong to the running turn and nothing may follow its
terminal event. The events are then numbered (EventLog), opened requests recorded
(PendingRequests), a terminal event ends the turn (Turns) and expires its unanswered
requests, and the whole batch goes to the writer as one unit. The running turn's summary for
the turn list (its last token usage and agent message, its terminal seq) is updated from the
batch and stored with it. The events become visible to subscribers first among the unit's
on_commit callbacks; the next turn is dispatched after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from ._results import check_result
from ._shared import Committer, log
from .access import Limits, TokenBucket
from .messages import IncomingEvent, IngestResult
from .model import TERMINAL_KINDS, TurnState, now_us
from .ports import BodyCodec, Changes, Observer

if TYPE_CHECKING:
    from ._leases import Leases
    from ._log import EventLog
    from ._pending import PendingRequests
    from ._record import SessionRecord
    from ._scheduling import Scheduler
    from ._sessions import SessionCache
    from ._turns import Turns
    from ._workers import Workers


class Ingest:
    def __init__(self, committer: Committer, limits: Limits, codec: BodyCodec, observer: Observer) -> None:
        self._committer = committer
        self._limits = limits
        self._codec = codec
        self._observer = observer
        self.reused_worker_seqs = 0  # batches refused for a reused worker_seq (see _check_duplicate)

    def connect(
        self,
        *,
        sessions: SessionCache,
        leases: Leases,
        events: EventLog,
        turns: Turns,
        requests: PendingRequests,
        workers: Workers,
        scheduler: Scheduler,
    ) -> None:
        self._sessions = sessions
        self._leases = leases
        self._events = events
        self._turns = turns
        self._requests = requests
        self._workers = workers
        self._scheduler = scheduler

    def ingest(
        self, worker_id: str, session_id: str, epoch: int, events: list[IncomingEvent], owner: str
    ) -> IngestResult:
        rec = self._leases.check(worker_id, session_id, epoch, owner)
        expected = self._leases.acked_worker_seq(rec) + 1
        for e in events:
            if e.worker_seq < expected:
                self._check_duplicate(rec, worker_id, epoch, e)
        fresh = [e for e in events if e.worker_seq >= expected]
        for i, e in enumerate(fresh):
            if e.worker_seq != expected + i:
                raise errors.WorkerSeqGap(expected + i, e.worker_seq)
        if not fresh:
            return IngestResult(None, self._leases.acked_worker_seq(rec), self._events.committed_seq(rec), [])
        limits = self._limits
        bucket = rec.events_bucket
        if bucket is None:
            bucket = rec.events_bucket = TokenBucket(
                limits.events_per_second_per_session, limits.event_burst_per_session
            )
        if not bucket.spend(len(fresh)):
            raise errors.LimitExceeded(
                "events_per_second_per_session",
                limits.events_per_second_per_session,
                f"session {session_id!r} is writing events faster than allowed; resend them after a pause",
            )
        active = self._turns.active(rec)
        running_id = active.turn_id if active is not None and active.state == TurnState.RUNNING else ""
        for e in fresh:
            if e.turn_id != running_id:
                raise errors.InvalidArgument(
                    "events.turn_id",
                    f"turn {e.turn_id!r} is not the session's running turn"
                    + (f" ({running_id})" if running_id else " (no turn is running)"),
                )
            if e.kind in TERMINAL_KINDS and e is not fresh[-1]:
                raise errors.InvalidArgument("events", "no event may follow a turn's terminal event in a batch")
        opened = [e for e in fresh if e.kind == "request_opened"]
        if opened:
            self._requests.check_opened(rec, [e.request for e in opened])
        # Checked: from here on nothing refuses the batch.
        now = now_us()
        last = fresh[-1]
        ends = last.kind in TERMINAL_KINDS and active is not None
        # A terminal event is numbered last, after the control plane's own events for the
        # requests its turn leaves unanswered: the terminal event is always the turn's last.
        stored = self._events.number(rec, fresh[:-1] if ends else fresh, epoch, now)
        changes = Changes(event_inserts=stored)
        self._observer.events_ingested(len(fresh))
        self._leases.rehydrated(rec)  # the holder's first write since its grant: its runtime is up
        self._leases.ack(rec, last.worker_seq)
        self._leases.mark_turn(rec, fresh[0].worker_seq, last.turn_id)
        rec.offer.granted_turn = ""  # its worker runs it
        for e in opened:  # checked above: each carries a request
            request = e.request
            assert request is not None
            self._requests.open(rec, request, e.turn_id, now, changes)
        summarized = False
        for e in fresh:
            if e.kind == "turn_started":
                self._sessions.adopt_thread_id(rec, e.runtime_thread_id, now, changes)
            elif e.kind == "token_usage" and active is not None:
                active.usage = e.body
                summarized = True
            elif e.kind == "item_completed" and active is not None:
                text = self._codec.agent_message_text(e.body)
                if text is not None:
                    active.final_message = text
                    summarized = True
        if summarized and not ends:
            assert active is not None
            changes.turn_updates.append(active)  # the turn list's summary stays durable
        if ends:
            assert active is not None
            state = TERMINAL_KINDS[last.kind]
            message = last.message
            refused = ""  # why the turn's result does not match its output schema
            if state == TurnState.COMPLETED and active.output_schema:
                active.result_json, refused = check_result(active.output_schema, active.final_message)
                if refused:
                    state, message = TurnState.FAILED, refused
            self._turns.finish(rec, active, state, last.exit_code, message, now, changes)
            self._sessions.touch(rec, now, changes)
            stored.extend(  # the same list as changes.event_inserts
                self._requests.expire(
                    rec, active.turn_id, f"its turn ended ({state.name.lower()}) before an answer", changes
                )
            )
            if refused:
                # The worker's turn_completed is acknowledged but not stored: the control plane
                # ends the turn itself, saying why the result was refused.
                body = self._codec.turn_failed(refused)
                stored.append(self._events.own_event(rec, active.turn_id, "turn_failed", body))
            else:
                stored.extend(self._events.number(rec, [last], epoch, now))
            active.last_seq = stored[-1].seq
            self._workers.free_slot(worker_id, active.turn_id)
            changes.on_commit.append(lambda: self._scheduler.dispatch(rec))
            changes.on_commit.append(self._scheduler.dispatch_waiting)
        changes.on_commit.insert(0, lambda: self._events.published(rec, stored))
        seq = self._events.last_seq(rec)
        return IngestResult(self._committer.submit(changes), self._leases.acked_worker_seq(rec), seq, stored)

    def _check_duplicate(self, rec: SessionRecord, worker_id: str, epoch: int, e: IncomingEvent) -> None:
        """A resent event (its number already accepted under this epoch) must be the event
        stored under that number: a worker that restarts its numbering, or reuses a number for
        something else, would otherwise have its events acknowledged and silently dropped."""
        stored = self._events.recent_by_worker_seq(rec, epoch, e.worker_seq)
        if stored is not None:
            same = stored.turn_id == e.turn_id and stored.kind == e.kind and stored.body == e.body
            what = f"stored as seq {stored.seq}, a {stored.kind!r} event of turn {stored.turn_id!r}"
        else:
            turn_id = self._leases.turn_at(rec, e.worker_seq)
            same = turn_id is None or turn_id == e.turn_id
            what = f"used by turn {turn_id!r}"
        if same:
            return
        self.reused_worker_seqs += 1
        log.warning(
            "worker %s reused worker_seq %d of session %s at lease epoch %d for a %r event of turn %r (%s); "
            "refusing the batch",
            worker_id,
            e.worker_seq,
            rec.session_id,
            epoch,
            e.kind,
            e.turn_id,
            what,
        )
        raise errors.WorkerSeqReused(
            "events.worker_seq",
            f"worker_seq {e.worker_seq} was already used under lease epoch {epoch} ({what}) and this event "
            f"differs; worker_seq numbers every event of the epoch, across turns: continue at "
            f"{self._leases.acked_worker_seq(rec) + 1}",
        )
