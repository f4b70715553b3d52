"""The control plane's rules, behind one facade: `Hub` composes the domain parts.

One `Hub` per process owns the live state of the sessions it has loaded (the live ones and
those used in the last `Timings.session_idle_s`; the others are evicted and reloaded on
demand) and of every connected worker, split among parts that each own one concern (see each module):

| part               | module            | owns                                                 |
|--------------------|-------------------|------------------------------------------------------|
| SessionCache       | `_sessions.py`    | loaded sessions, eviction, session CRUD, views       |
| Turns              | `_turns.py`       | turns, queue, idempotency keys, per-owner limits     |
| Scheduler          | `_scheduling.py`  | dispatch, stickiness, offers and their timers        |
| Leases             | `_leases.py`      | leases, fencing, renewals, the lease sweeper         |
| EventLog           | `_log.py`         | seq numbers, recent events, subscribers (fan-out)    |
| Ingest             | `_ingest.py`      | worker event batches, the events-per-second limit    |
| PendingRequests    | `_pending.py`     | pending requests and their answers                   |
| Snapshots          | `_snapshots.py`   | snapshot uploads and requests, resume sources        |
| Restores           | `_restore.py`     | RestoreSession: offer, grant, confirmation           |
| Workers            | `_workers.py`     | registrations, Lease streams, worker-dead, drain     |
| Recovery           | `_recovery.py`    | reloading at start and after a failed write          |
| TurnDeadlines      | `_deadlines.py`   | interrupt grace, maximum turn duration               |
| Forks              | `_forks.py`       | ForkSession: copying a session up to a turn          |
| Reverts            | `_revert.py`      | RevertSession: moving a session's head back          |
| Bundles            | `_bundles.py`     | ExportSession / ImportSession: a session at rest     |
| Deletions          | `_deletions.py`   | scheduled deletions (the sweeper), purging an owner  |
| Retentions         | `_retention.py`   | idle sessions archived, then deleted (the sweep)     |

Per-session state is one `SessionRecord` (`_record.py`) made of a sub-record per part.

All decisions are made synchronously on the event loop, before the first await, so two
requests can never both win a race; the durable change then goes through the group-commit
writer (`ports.GroupCommitWriter`), and what must follow the commit (pushing an offer,
waking subscribers) runs in the writer's `on_commit` callbacks, in commit order.

Fencing: every worker write names (session, lease epoch). Only the current holder at the
current epoch may write; anything else is `LeaseLost`. Moving a session to another worker
bumps its epoch, so a worker that lost a lease can never append again.

Owners: every session and worker belongs to one. Every session call names the caller's owner
and finds only that owner's sessions (another owner's session does not exist, to the caller);
turns are offered only to workers of the session's owner, so a lease, and with it every
worker write, stays within one owner.

The parts call one another (an ended turn dispatches the next; dispatching reads turns and
leases), so the hub makes them first and connects them second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

from ._bundles import Bundles, SessionBundle
from ._deadlines import TurnDeadlines
from ._deletions import Deletions
from ._forks import Forks
from ._ingest import Ingest
from ._leases import Leases
from ._log import EventLog
from ._pending import PendingRequests
from ._recovery import Recovery
from ._restore import Restores
from ._retention import Retentions
from ._revert import Reverts
from ._scheduling import Scheduler
from ._sessions import SessionCache
from ._shared import Committer, Tasks
from ._snapshots import Snapshots
from ._turns import Turns
from ._workers import Workers
from .access import Limits
from .messages import (
    AnswerMsg,
    CloseMsg,
    DrainMsg,
    GrantMsg,
    IncomingEvent,
    IngestResult,
    InterruptMsg,
    OfferMsg,
    RenewedMsg,
    ResumeSource,
    Retention,
    RetentionPolicy,
    RevokeMsg,
    SessionView,
    SnapshotRequestMsg,
    Timings,
    WorkerMsg,
    WorkerStatus,
)
from .model import (
    Checkpoint,
    Event,
    InputPolicy,
    PendingRequest,
    RequestState,
    SessionState,
    Snapshot,
    Turn,
    WorkerInfo,
    now_us,
)
from .ports import (
    BodyCodec,
    GroupCommitWriter,
    NullObserver,
    NullTurnTracer,
    Observer,
    SessionQuery,
    SessionReader,
    TurnTracer,
)

__all__ = [
    "AnswerMsg",
    "Retention",
    "RetentionPolicy",
    "SessionBundle",
    "BodyCodec",
    "CloseMsg",
    "DrainMsg",
    "GrantMsg",
    "Hub",
    "HubLoad",
    "IncomingEvent",
    "IngestResult",
    "InterruptMsg",
    "OfferMsg",
    "RenewedMsg",
    "ResumeSource",
    "RevokeMsg",
    "SessionView",
    "SnapshotRequestMsg",
    "Timings",
    "WorkerMsg",
    "WorkerStatus",
]


class HubLoad(NamedTuple):
    """What the hub holds now, for operators' gauges (`Hub.load`)."""

    sessions_loaded: int
    sessions_live: int  # loaded, with a turn queued, offered or running, or a worker holding the lease
    turns_queued: int
    oldest_queued_s: float  # how long the oldest queued turn has waited (0: none waits)
    workers_connected: int
    slots: int  # of the connected workers
    slots_in_use: int  # by offered and running turns and restores, on the connected workers


class Hub:
    def __init__(
        self,
        reader: SessionReader,
        writer: GroupCommitWriter,
        codec: BodyCodec,
        timings: Timings,
        limits: Limits | None = None,
        retention: Retention | None = None,
        observer: Observer | None = None,
        tracer: TurnTracer | None = None,
    ) -> None:
        """`observer` hears what happens, for metrics, and `tracer` traces each turn (default:
        nobody, nothing)."""
        self.timings = timings
        self.limits = limits or Limits()
        self._tasks = Tasks()  # owned here, awaited by stop()
        observer = observer or NullObserver()
        committer = Committer(writer)
        sessions = self._sessions = SessionCache(reader, committer, timings)
        events = self._events = EventLog(reader, observer)
        turns = self._turns = Turns(reader, committer, codec, self.limits, observer, tracer or NullTurnTracer())
        scheduler = self._scheduler = Scheduler(committer, timings, codec)
        leases = self._leases = Leases(committer, self._tasks, timings, observer)
        ingest = self._ingest = Ingest(committer, self.limits, codec, observer)
        requests = self._requests = PendingRequests(reader, committer, codec)
        snapshots = self._snapshots = Snapshots(reader, committer, timings)
        restores = self._restores = Restores(committer, timings)
        workers = self._workers = Workers(committer, timings)
        recovery = self._recovery = Recovery(reader, self._tasks)
        deadlines = self._deadlines = TurnDeadlines(self._tasks, timings)
        forks = self._forks = Forks(reader, committer, codec)
        reverts = self._reverts = Reverts(reader, committer, codec)
        bundles = self._bundles = Bundles(reader, committer, codec)
        deletions = self._deletions = Deletions(reader, self._tasks, timings)
        retentions = self._retentions = Retentions(reader, self._tasks, retention or Retention())

        sessions.connect(
            turns=turns,
            events=events,
            leases=leases,
            scheduler=scheduler,
            restores=restores,
            workers=workers,
            requests=requests,
        )
        events.connect(sessions=sessions)
        forks.connect(sessions=sessions, turns=turns, events=events)
        bundles.connect(sessions=sessions, turns=turns, events=events)
        deletions.connect(sessions=sessions)
        retentions.connect(sessions=sessions, turns=turns)
        reverts.connect(sessions=sessions, turns=turns, events=events, leases=leases, restores=restores)
        turns.connect(
            sessions=sessions,
            events=events,
            scheduler=scheduler,
            workers=workers,
            requests=requests,
            deadlines=deadlines,
        )
        deadlines.connect(turns=turns, leases=leases, workers=workers)
        scheduler.connect(
            sessions=sessions, turns=turns, leases=leases, restores=restores, workers=workers, events=events
        )
        leases.connect(sessions=sessions, workers=workers, turns=turns, restores=restores, scheduler=scheduler)
        ingest.connect(
            sessions=sessions,
            leases=leases,
            events=events,
            turns=turns,
            requests=requests,
            workers=workers,
            scheduler=scheduler,
        )
        requests.connect(sessions=sessions, events=events, turns=turns, leases=leases, workers=workers)
        snapshots.connect(sessions=sessions, leases=leases, events=events, workers=workers, restores=restores)
        restores.connect(
            sessions=sessions, turns=turns, leases=leases, workers=workers, scheduler=scheduler, events=events
        )
        workers.connect(sessions=sessions, leases=leases, scheduler=scheduler, turns=turns, requests=requests)
        recovery.connect(
            sessions=sessions, events=events, turns=turns, scheduler=scheduler, restores=restores, workers=workers
        )
        writer.on_failure = recovery.on_write_failure

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Reload sessions with open turns so they are dispatched when workers connect."""
        # Loading gives every held lease a full TTL: workers get that long to reconnect.
        await self._recovery.reload_open_sessions()
        self._leases.start_sweeper()
        self._sessions.start_evictor(self._tasks)
        self._deletions.start_sweeper()
        self._retentions.start()

    async def stop(self) -> None:
        await self._tasks.stop()
        self._workers.close_all("control plane shutting down")
        for rec in self._sessions.stop():
            self._events.wake(rec)  # ends live subscriptions, UNAVAILABLE

    def loaded_sessions(self) -> int:
        """How many sessions are in memory now (live ones and recently used ones)."""
        return len(self._sessions)

    def load(self) -> HubLoad:
        """What the hub holds now. Walks only busy sessions, held leases and workers, never
        every loaded session, so it stays cheap with many sessions loaded."""
        live = {rec.session_id for rec in self._turns.busy_records()}
        live.update(rec.session_id for rec in self._leases.leased())
        queued, oldest_us = self._turns.queued()
        connected = slots = free = 0
        for w in self._workers.all():
            if w.connected:
                connected += 1
                slots += w.info.slots
                free += w.free_slots
        return HubLoad(
            sessions_loaded=len(self._sessions),
            sessions_live=len(live),
            turns_queued=queued,
            oldest_queued_s=max(0.0, (now_us() - oldest_us) / 1e6) if oldest_us else 0.0,
            workers_connected=connected,
            slots=slots,
            slots_in_use=slots - free,
        )

    def evict_idle(self, now: float | None = None) -> int:
        """Drop the sessions that are not live and were not used for `session_idle_s` before
        `now` (a `time.monotonic()` reading; default: now). The evictor calls this on its own;
        returns how many were dropped."""
        return self._sessions.evict_idle(now)

    # ----------------------------------------------------------------- sessions

    async def create_session(
        self, owner: str, runtime: str, worker_selector: dict[str, str], labels: dict[str, str]
    ) -> SessionView:
        return await self._sessions.create(owner, runtime, worker_selector, labels)

    async def get_session(self, owner: str, session_id: str) -> SessionView:
        return self._sessions.view(await self._sessions.require(session_id, owner))

    async def list_sessions(
        self, query: SessionQuery, state: SessionState | None
    ) -> tuple[list[SessionView], tuple[str, int] | None]:
        """One page of sessions and, when more follow, the (id, activity) the next starts after."""
        return await self._sessions.list_sessions(query, state)

    async def update_session(
        self, owner: str, session_id: str, title: str | None, labels: dict[str, str] | None
    ) -> SessionView:
        """Change the title or the labels (None: leave as is)."""
        return await self._sessions.update(owner, session_id, title, labels)

    async def archive_session(self, owner: str, session_id: str) -> SessionView:
        return await self._sessions.archive(owner, session_id)

    async def unarchive_session(self, owner: str, session_id: str) -> SessionView:
        return await self._sessions.unarchive(owner, session_id)

    async def delete_session(self, owner: str, session_id: str) -> None:
        await self._sessions.delete(owner, session_id)

    async def schedule_deletion(self, owner: str, session_id: str, after_s: float) -> SessionView:
        """Delete the session `after_s` from now, durably (`_deletions.py`)."""
        return await self._deletions.schedule(owner, session_id, after_s)

    async def cancel_deletion(self, owner: str, session_id: str) -> SessionView:
        return await self._deletions.cancel(owner, session_id)

    async def sweep_deletions(self) -> int:
        """Delete the sessions whose scheduled deletion is due now (the sweeper does this on
        its own every `deletion_sweep_s`); returns how many."""
        return await self._deletions.sweep()

    async def sweep_retention(self) -> tuple[int, int]:
        """Archive and delete the sessions idle past the retention policy now (the retention
        sweep does this on its own every `Retention.sweep_s` when a policy is set); returns how
        many were archived and deleted."""
        return await self._retentions.sweep()

    def purge_sessions(self, owner: str) -> AsyncIterator[int]:
        """Delete every session of `owner` in batches; yields the count deleted after each."""
        return self._deletions.purge_sessions(owner)

    async def fork_session(self, owner: str, session_id: str, turn_id: str) -> SessionView:
        """Copy the session up to and including `turn_id` (default: its last completed turn)."""
        return await self._forks.fork(owner, session_id, turn_id)

    async def revert_session(self, owner: str, session_id: str, turn_id: str) -> SessionView:
        """Move the session's head back to the end of `turn_id` (see `_revert.py`)."""
        return await self._reverts.revert(owner, session_id, turn_id)

    async def export_session(self, owner: str, session_id: str) -> SessionBundle:
        """The stored records of a session at rest, its events a page at a time (`_bundles.py`)."""
        return await self._bundles.export(owner, session_id)

    async def import_session(self, owner: str, bundle: SessionBundle, keep_ids: bool) -> SessionView:
        """Store a parsed bundle as a new session of `owner` (`_bundles.py`)."""
        return await self._bundles.import_session(owner, bundle, keep_ids)

    # ----------------------------------------------------------------- turns and events

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
        """Queue a turn; with `key`, the same key and input return the first turn (True).
        `policy` says what happens when a turn is queued or running already; `output_schema`
        (checked JSON Schema text) is what the turn's result must match; `trace_context` (the
        caller's W3C trace context headers) is the trace the turn's continues."""
        return await self._turns.send_input(owner, session_id, text, key, policy, output_schema, trace_context)

    async def get_turn(self, owner: str, session_id: str, turn_id: str) -> Turn:
        return await self._turns.get_turn(owner, session_id, turn_id)

    async def list_turns(
        self, owner: str, session_id: str, page_size: int, after_ordinal: int, descending: bool
    ) -> tuple[list[Turn], int | None]:
        """One page of the session's turns and, when more follow, the ordinal the next starts after."""
        return await self._turns.list_turns(owner, session_id, page_size, after_ordinal, descending)

    async def interrupt_turn(self, owner: str, session_id: str, turn_id: str, reason: str) -> Turn:
        return await self._turns.interrupt_turn(owner, session_id, turn_id, reason)

    async def subscribe(
        self, owner: str, session_id: str, after_seq: int, stop_at_end: bool
    ) -> AsyncIterator[list[Event]]:
        """Committed events after `after_seq`, in order, then live ones as they commit."""
        return await self._events.subscribe(owner, session_id, after_seq, stop_at_end)

    # ----------------------------------------------------------------- workers

    async def register(self, info: WorkerInfo) -> str:
        return await self._workers.register(info)

    def worker_owner(self, worker_id: str) -> str | None:
        """The owner of a worker registered since this control plane started, else None."""
        return self._workers.owner_of(worker_id)

    async def attach(
        self,
        worker_id: str,
        registration_id: str,
        held: list[tuple[str, int]],
        outbox: asyncio.Queue[WorkerMsg],
        known_turns: set[str] | None = None,
    ) -> list[tuple[str, int]]:
        """Bind a Lease stream to its registration. Returns the held leases it no longer has.
        `known_turns`: the turns the worker says it knows (LeaseOpen.turn_ids), heeded when it
        announced "reports_turns"."""
        return await self._workers.attach(worker_id, registration_id, held, outbox, known_turns)

    def detach(self, worker_id: str, outbox: asyncio.Queue[WorkerMsg]) -> None:
        self._workers.detach(worker_id, outbox)

    def worker_draining(self, worker_id: str) -> None:
        self._workers.worker_draining(worker_id)

    def drain_worker(self, owner: str | None, worker_id: str, grace_s: float | None) -> WorkerStatus:
        """Drain one of `owner`'s workers (any owner's when `owner` is None: an admin)."""
        return self._workers.drain_worker(owner, worker_id, grace_s)

    def worker_statuses(self, owner: str | None) -> list[WorkerStatus]:
        """`owner`'s workers (every owner's when None: an admin), connected first."""
        return self._workers.statuses(owner)

    # ----------------------------------------------------------------- offers and leases

    def renew(
        self,
        worker_id: str,
        registration_id: str,
        held: list[tuple[str, int]],
        digest: tuple[int, int] | None = None,
    ) -> RenewedMsg:
        """Renew the listed leases, or with `digest` (count, xor) all the worker holds."""
        return self._leases.renew(worker_id, registration_id, held, digest)

    def worker_idle(self, worker_id: str) -> bool:
        """Whether the worker holds no lease and has nothing offered or running."""
        w = self._workers.get(worker_id)
        return w is not None and w.idle

    async def accept(self, worker_id: str, session_id: str, turn_id: str, epoch: int) -> None:
        await self._scheduler.accept(worker_id, session_id, turn_id, epoch)

    def reject(self, worker_id: str, session_id: str, turn_id: str, reason: str) -> None:
        self._scheduler.reject(worker_id, session_id, turn_id, reason)

    async def release(self, worker_id: str, session_id: str, epoch: int, reason: str = "") -> None:
        await self._leases.release(worker_id, session_id, epoch, reason)

    def check_lease(self, worker_id: str, session_id: str, epoch: int, owner: str) -> None:
        """Return if `worker_id` (of `owner`) holds the session's lease at `epoch`; else raise
        LeaseLost. For another owner's session the answer is the one for a session that does
        not exist."""
        self._leases.check(worker_id, session_id, epoch, owner)

    async def load_for_worker(self, worker_id: str, session_id: str, epoch: int, owner: str) -> None:
        """Like check_lease, but loads the session first (after a control-plane restart)."""
        await self._leases.load_and_check(worker_id, session_id, epoch, owner)

    def forced_turn_ends(self) -> int:
        """How many turns the control plane ended itself: interrupts not honoured in the grace."""
        return self._deadlines.forced_ends

    def reused_worker_seqs(self) -> int:
        """How many worker batches were refused for reusing an event number (WORKER_SEQ_REUSED)."""
        return self._ingest.reused_worker_seqs

    def fenced_calls(self, worker_id: str) -> int:
        """How many of the worker's writes, resumes and snapshots fencing refused (LEASE_LOST)."""
        return self._leases.fenced_calls(worker_id)

    def ingest(
        self, worker_id: str, session_id: str, epoch: int, events: list[IncomingEvent], owner: str
    ) -> IngestResult:
        """Fence, dedup, number and queue a batch of worker events (see `IngestResult`)."""
        return self._ingest.ingest(worker_id, session_id, epoch, events, owner)

    # ----------------------------------------------------------------- pending requests

    async def respond_to_request(
        self, owner: str, session_id: str, request_id: str, answer: dict[str, Any], answer_json: str
    ) -> PendingRequest:
        """Resolve a pending request exactly once and send the answer to the turn's worker."""
        return await self._requests.respond(owner, session_id, request_id, answer, answer_json)

    async def list_requests(self, owner: str, session_id: str, state: RequestState | None) -> list[PendingRequest]:
        return await self._requests.list_requests(owner, session_id, state)

    # ----------------------------------------------------------------- snapshots, restore, resume

    async def restore_session(
        self, owner: str, session_id: str, selector: dict[str, str], worker_id: str
    ) -> SessionView:
        """Move an idle session onto another worker and rehydrate it there, now."""
        rec = await self._restores.restore_session(owner, session_id, selector, worker_id)
        return self._sessions.view(rec)

    async def latest_snapshot(self, owner: str, session_id: str) -> Snapshot:
        return await self._snapshots.latest(owner, session_id)

    async def request_snapshot(self, owner: str, session_id: str) -> Snapshot:
        return await self._snapshots.request(owner, session_id)

    async def store_snapshot(
        self,
        worker_id: str,
        session_id: str,
        epoch: int,
        seq: int,
        metadata_json: str,
        history: bytes,
        history_count: int,
        request_id: str,
        owner: str,
        checkpoint: Checkpoint | None = None,
        base_snapshot_id: str = "",
    ) -> Snapshot:
        """Store a snapshot (and the workspace checkpoint it carries, checked by Workspaces);
        with `base_snapshot_id`, `history` is what follows that snapshot's (Snapshots)."""
        return await self._snapshots.store(
            worker_id,
            session_id,
            epoch,
            seq,
            metadata_json,
            history,
            history_count,
            request_id,
            owner,
            checkpoint,
            base_snapshot_id=base_snapshot_id,
        )

    async def resume_source(self, worker_id: str, session_id: str, epoch: int, owner: str) -> ResumeSource:
        """What a resuming worker reads (see `ResumeSource`)."""
        return await self._snapshots.resume_source(worker_id, session_id, epoch, owner)

    def events_between(self, session_id: str, after_seq: int, upto: int) -> AsyncIterator[list[Event]]:
        """Stored events in (after_seq, upto], a page at a time."""
        return self._events.events_between(session_id, after_seq, upto)
