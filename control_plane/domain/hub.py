"""The control plane's rules: sessions, turns, leases, fencing, scheduling and fan-out.

One `Hub` per process owns the live state of every session it has touched (a `_SessionCtx`)
and of every connected worker (a `_WorkerConn`). All decisions are made synchronously on the
event loop, before the first await, so two requests can never both win a race; the durable
change then goes through the store's group-commit writer, and what must follow the commit
(pushing an offer, waking subscribers) runs in the writer's `on_commit` callbacks, in commit
order.

Fencing: every worker write names (session, lease epoch). Only the current holder at the
current epoch may write; anything else is `LeaseLost`. Moving a session to another worker
bumps its epoch, so a worker that lost a lease can never append again.

Owners: every session and worker belongs to one. Every session call names the caller's owner
and finds only that owner's sessions (another owner's session does not exist, to the caller);
turns are offered only to workers of the session's owner, so a lease, and with it every
worker write, stays within one owner.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ..store import (
    Reader,
    WriteFailed,
    Writer,
    WriteSet,
    lease_to_row,
    request_to_row,
    request_update_row,
    session_to_row,
    session_update_row,
    snapshot_to_row,
    turn_to_row,
    turn_update_row,
)
from . import errors
from .access import Limits, TokenBucket
from .model import (
    TERMINAL_KINDS,
    Event,
    Lease,
    PendingRequest,
    RequestState,
    Session,
    SessionState,
    Snapshot,
    Turn,
    TurnState,
    WorkerInfo,
    new_id,
    now_us,
)
from .requests import check_answer

log = logging.getLogger(__name__)

# Committed events kept in memory per session so live subscribers never touch the database.
_RECENT_EVENTS = 4096
_REPLAY_PAGE = 1000
_RESUME_PAGE = 2000


class BodyCodec(Protocol):
    """Encodes the event bodies the control plane writes itself (api/ provides it)."""

    def input_received(self, text: str) -> bytes: ...
    def turn_failed(self, message: str, worker_lost: bool = False) -> bytes: ...
    def turn_interrupted(self, reason: str) -> bytes: ...
    def request_resolved(self, request: PendingRequest) -> bytes: ...


@dataclass(frozen=True)
class Timings:
    """Every timing a worker lives by; the server is the authority and sends them at Register.

    Three clocks: connection liveness (a Lease stream silent for `liveness_timeout_s` is
    closed), worker-dead (a worker whose stream closed and that did not open a new one within
    `worker_dead_grace_s` has its sessions moved), and lease expiry (a lease not renewed for
    `lease_ttl_s` moves its session, whatever the connection looks like).
    """

    heartbeat_interval_s: float = 2.0
    liveness_timeout_s: float = 6.0
    lease_ttl_s: float = 15.0
    worker_dead_grace_s: float = 1.0
    offer_timeout_s: float = 10.0
    # How long a session waits for its warm holder while that worker is busy (no free slot)
    # before any eligible worker takes it by rehydration.
    sticky_timeout_s: float = 5.0
    reconnect_backoff_initial_s: float = 0.2
    reconnect_backoff_max_s: float = 5.0
    snapshot_timeout_s: float = 30.0
    max_events_per_message: int = 1000


# Messages the hub pushes on a worker's Lease stream; api/ turns them into LeaseResponse.
@dataclass(frozen=True)
class OfferMsg:
    session_id: str
    turn_id: str
    input: str
    runtime: str
    lease_epoch: int
    resume_required: bool
    last_seq: int
    accept_deadline_us: int
    restore_only: bool = False


@dataclass(frozen=True)
class GrantMsg:
    session_id: str
    turn_id: str
    lease_epoch: int
    lease_expire_us: int


@dataclass(frozen=True)
class InterruptMsg:
    session_id: str
    turn_id: str
    reason: str


@dataclass(frozen=True)
class RevokeMsg:
    session_id: str
    lease_epoch: int
    reason: str


@dataclass(frozen=True)
class SnapshotRequestMsg:
    session_id: str
    lease_epoch: int
    request_id: str


@dataclass(frozen=True)
class RenewedMsg:
    lease_expire_us: int
    lost: list[tuple[str, int]]


@dataclass(frozen=True)
class DrainMsg:
    deadline_us: int  # 0: the worker's own grace


@dataclass(frozen=True)
class CloseMsg:
    """Ends the stream: the registration was replaced."""

    reason: str


@dataclass(frozen=True)
class AnswerMsg:
    """An application answered a pending request of a turn the worker runs."""

    session_id: str
    turn_id: str
    request_id: str
    response_json: str


WorkerMsg = (
    OfferMsg | GrantMsg | InterruptMsg | RevokeMsg | SnapshotRequestMsg | RenewedMsg | DrainMsg | AnswerMsg | CloseMsg
)


class IncomingEvent(NamedTuple):
    """One worker event, decoded just enough to fence, dedup and end turns."""

    worker_seq: int
    turn_id: str
    kind: str
    body: bytes
    exit_code: int = 0
    message: str = ""
    runtime_thread_id: str = ""
    request: PendingRequest | None = None  # for request_opened


@dataclass(frozen=True)
class SessionView:
    session: Session
    state: SessionState
    last_seq: int
    active_turn_id: str
    worker_id: str
    lease_epoch: int


@dataclass(frozen=True)
class WorkerStatus:
    info: WorkerInfo
    running_turns: int
    held_sessions: int
    connected: bool
    draining: bool


@dataclass
class _Restore:
    """A RestoreSession under way: offered, then granted, then confirmed by a snapshot."""

    worker_id: str
    epoch: int
    done: asyncio.Future[None]
    granted: bool = False

    @property
    def slot(self) -> str:
        return _restore_slot(self.epoch)


def _restore_slot(epoch: int) -> str:
    """The in-flight key a placement occupies on its worker until granted."""
    return f"restore:{epoch}"


@dataclass
class _SessionCtx:
    session: Session
    last_seq: int  # highest seq assigned (may be ahead of committed_seq while a commit runs)
    committed_seq: int
    lease: Lease | None
    lease_expires: float = 0.0  # time.monotonic() deadline
    acked_worker_seq: int = 0  # highest worker_seq accepted under the current lease epoch
    turns: dict[str, Turn] = field(default_factory=dict)  # open turns only
    queue: collections.deque[str] = field(default_factory=collections.deque)
    active: Turn | None = None  # offered or running
    offered_to: str = ""
    offer_timer: asyncio.TimerHandle | None = None
    offer_epoch: int = 0
    keys: dict[str, str] = field(default_factory=dict)  # idempotency key -> turn id
    recent: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    deleted: bool = False
    sticky_since: float = 0.0  # when the next turn started waiting for a busy holder
    restoring: _Restore | None = None
    # Pending requests of the open turns (and answered ones while their turn still runs, so a
    # reconnecting worker gets the answer again); dropped when the turn ends.
    requests: dict[str, PendingRequest] = field(default_factory=dict)
    events_bucket: TokenBucket | None = None  # the events-per-second limit, made on first ingest

    @property
    def state(self) -> SessionState:
        if self.session.archived:
            return SessionState.ARCHIVED
        return SessionState.ACTIVE if (self.active or self.queue) else SessionState.IDLE

    def holder(self) -> str:
        return self.lease.worker_id if self.lease else ""


@dataclass
class _WorkerConn:
    info: WorkerInfo
    outbox: asyncio.Queue[WorkerMsg] | None = None
    in_flight: set[str] = field(default_factory=set)  # turn ids offered or running
    sessions: set[str] = field(default_factory=set)  # sessions whose lease it holds
    draining: bool = False
    dead_timer: asyncio.TimerHandle | None = None  # worker-dead grace after its stream closed

    @property
    def free_slots(self) -> int:
        return self.info.slots - len(self.in_flight)

    def push(self, msg: WorkerMsg) -> None:
        if self.outbox is not None:
            self.outbox.put_nowait(msg)


class Hub:
    def __init__(
        self, reader: Reader, writer: Writer, codec: BodyCodec, timings: Timings, limits: Limits | None = None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._codec = codec
        self.timings = timings
        self.limits = limits or Limits()
        self._ctx: dict[str, _SessionCtx] = {}
        self._by_owner: dict[str, set[str]] = collections.defaultdict(set)  # owner -> loaded session ids
        self._loading: dict[str, asyncio.Future[_SessionCtx | None]] = {}
        self._workers: dict[str, _WorkerConn] = {}
        self._waiting: dict[str, None] = {}  # sessions with a queued turn and no worker yet
        self._snapshot_waiters: dict[str, tuple[str, asyncio.Future[Snapshot]]] = {}  # by request id
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # owned here, awaited by stop()
        # Calls refused by fencing, per worker: a worker that keeps writing for a lease it lost
        # is a zombie, and this is how the conformance kit sees one.
        self._fenced_calls: collections.Counter[str] = collections.Counter()
        writer.on_failure = self._on_write_failure

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Reload sessions with open turns so they are dispatched when workers connect."""
        # Loading gives every held lease a full TTL: workers get that long to reconnect.
        await self._reload_open_sessions()
        self._sweeper = asyncio.create_task(self._sweep_leases(), name="tether-lease-sweeper")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None
        for w in self._workers.values():
            w.push(CloseMsg("control plane shutting down"))
        for ctx in self._ctx.values():
            ctx.deleted = True  # ends live subscriptions
            ctx.changed.set()

    # ----------------------------------------------------------------- loading

    async def _load(self, session_id: str) -> _SessionCtx | None:
        ctx = self._ctx.get(session_id)
        if ctx is not None:
            return ctx
        pending = self._loading.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[_SessionCtx | None] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = fut
        try:
            loaded = await self._reader.load_session(session_id)
            ctx = None
            if loaded is not None:
                ctx = _SessionCtx(
                    session=loaded.session,
                    last_seq=loaded.last_seq,
                    committed_seq=loaded.last_seq,
                    lease=loaded.lease,
                )
                if loaded.lease is not None:
                    ctx.acked_worker_seq = loaded.last_worker_seq
                    if loaded.lease.worker_id:
                        ctx.lease_expires = time.monotonic() + self.timings.lease_ttl_s
                for turn in loaded.open_turns:
                    if turn.state == TurnState.RUNNING:
                        ctx.active = turn
                    else:
                        turn.state = TurnState.QUEUED
                        ctx.queue.append(turn.turn_id)
                    ctx.turns[turn.turn_id] = turn
                    if turn.idempotency_key:
                        ctx.keys[turn.idempotency_key] = turn.turn_id
                for request in loaded.open_requests:
                    ctx.requests[request.request_id] = request
                self._keep(ctx)
            fut.set_result(ctx)
            return ctx
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved; callers get it re-raised
            raise
        finally:
            del self._loading[session_id]

    def _keep(self, ctx: _SessionCtx) -> None:
        session = ctx.session
        self._ctx[session.session_id] = ctx
        self._by_owner[session.owner].add(session.session_id)

    def _forget(self, session_id: str) -> None:
        ctx = self._ctx.pop(session_id, None)
        if ctx is not None:
            self._by_owner[ctx.session.owner].discard(session_id)

    async def _require(self, session_id: str, owner: str) -> _SessionCtx:
        """The owner's session; another owner's is as absent as one that never existed."""
        ctx = await self._load(session_id)
        if ctx is None or ctx.deleted or ctx.session.owner != owner:
            raise errors.SessionNotFound(session_id)
        return ctx

    def _on_write_failure(self) -> None:
        # Sequence numbers and states were assigned in memory for writes that are now gone.
        # Rebuild from what is durable, as after a restart: drop every session context (live
        # subscribers re-resolve theirs), close worker streams so workers re-attach, reload.
        log.error("a write failed: rebuilding in-memory state from the database")
        for ctx in self._ctx.values():
            ctx.deleted = True
            ctx.changed.set()
            if ctx.offer_timer:
                ctx.offer_timer.cancel()
        self._ctx.clear()
        self._by_owner.clear()
        self._waiting.clear()
        for w in self._workers.values():
            w.push(CloseMsg("the control plane is recovering from a failed write; reconnect"))
            w.outbox = None
            w.in_flight.clear()
            w.sessions.clear()
        self._spawn(self._reload_open_sessions(), "tether-reload-after-write-failure")

    async def _reload_open_sessions(self) -> None:
        for session_id in await self._reader.sessions_with_open_turns():
            ctx = await self._load(session_id)
            if ctx is not None and ctx.queue and ctx.active is None:
                self._waiting[session_id] = None

    async def _commit(self, ws: WriteSet) -> None:
        try:
            await self._writer.submit(ws)
        except WriteFailed as exc:
            raise errors.Unavailable(f"the database did not accept the write: {exc}") from exc

    # ----------------------------------------------------------------- sessions

    async def create_session(
        self, owner: str, runtime: str, worker_selector: dict[str, str], labels: dict[str, str]
    ) -> SessionView:
        now = now_us()
        session = Session(new_id("ses"), runtime, dict(worker_selector), dict(labels), now, now, owner=owner)
        ctx = _SessionCtx(session=session, last_seq=0, committed_seq=0, lease=None)
        ws = WriteSet(session_inserts=[session_to_row(session)])
        await self._commit(ws)
        self._keep(ctx)
        return self._view(ctx)

    def _view(self, ctx: _SessionCtx) -> SessionView:
        lease = ctx.lease
        return SessionView(
            session=ctx.session,
            state=ctx.state,
            last_seq=ctx.committed_seq,
            active_turn_id=(ctx.active.turn_id if ctx.active else (ctx.queue[0] if ctx.queue else "")),
            worker_id=lease.worker_id if lease else "",
            lease_epoch=lease.epoch if lease else 0,
        )

    async def get_session(self, owner: str, session_id: str) -> SessionView:
        return self._view(await self._require(session_id, owner))

    async def list_sessions(
        self, owner: str, page_size: int, before_id: str | None, state: SessionState | None
    ) -> tuple[list[SessionView], str | None]:
        archived = None if state is None else state == SessionState.ARCHIVED
        active = None if state in (None, SessionState.ARCHIVED) else state == SessionState.ACTIVE
        rows = await self._reader.list_sessions(
            owner=owner, limit=page_size + 1, before_id=before_id, archived=archived, active=active
        )
        more = len(rows) > page_size
        views = []
        for session, has_open in rows[:page_size]:
            ctx = self._ctx.get(session.session_id)
            if ctx is not None and not ctx.deleted:
                views.append(self._view(ctx))
                continue
            st = SessionState.ARCHIVED if session.archived else (SessionState.ACTIVE if has_open else SessionState.IDLE)
            views.append(SessionView(session, st, 0, "", "", 0))
        # Sessions not in memory show last_seq 0 in a list; GetSession gives the full view.
        return views, (views[-1].session.session_id if more and views else None)

    async def archive_session(self, owner: str, session_id: str) -> SessionView:
        ctx = await self._require(session_id, owner)
        if not ctx.session.archived:
            ctx.session.archived = True
            ctx.session.update_time_us = now_us()
            await self._commit(WriteSet(session_updates=[session_update_row(ctx.session)]))
        return self._view(ctx)

    async def delete_session(self, owner: str, session_id: str) -> None:
        ctx = await self._require(session_id, owner)
        ctx.deleted = True
        self._waiting.pop(session_id, None)
        if ctx.offer_timer:
            ctx.offer_timer.cancel()
        if ctx.restoring is not None:
            self._fail_restore(ctx, ctx.restoring.epoch, errors.SessionNotFound(session_id))
        holder = self._workers.get(ctx.holder())
        if holder is not None:
            if ctx.active is not None and ctx.active.state == TurnState.RUNNING:
                holder.push(InterruptMsg(session_id, ctx.active.turn_id, "session deleted"))
            holder.push(RevokeMsg(session_id, ctx.lease.epoch if ctx.lease else 0, "session deleted"))
            holder.sessions.discard(session_id)
        if ctx.active is not None:
            for w in self._workers.values():
                w.in_flight.discard(ctx.active.turn_id)
        ctx.changed.set()
        try:
            await self._commit(WriteSet(session_deletes=[session_id]))
        finally:
            self._forget(session_id)

    # ----------------------------------------------------------------- turns

    async def send_input(self, owner: str, session_id: str, text: str, key: str) -> tuple[Turn, bool]:
        ctx = await self._require(session_id, owner)
        if key:
            existing = await self._turn_for_key(ctx, key)
            if existing is not None:
                if existing.input != text:
                    raise errors.IdempotencyKeyReused(
                        f"idempotency key {key!r} was used for turn {existing.turn_id} with "
                        "different input; use a new key for new input",
                        turn_id=existing.turn_id,
                    )
                return existing, True
            if ctx.deleted:
                raise errors.SessionNotFound(session_id)
        if ctx.session.archived:
            raise errors.SessionArchived(
                f"session {session_id!r} is archived and accepts no input", session_id=session_id
            )
        self._check_owner_limits(ctx)
        now = now_us()
        ctx.session.turn_count += 1
        ctx.session.update_time_us = now
        turn = Turn(
            turn_id=new_id("trn"),
            session_id=session_id,
            ordinal=ctx.session.turn_count,
            input=text,
            state=TurnState.QUEUED,
            create_time_us=now,
            idempotency_key=key,
        )
        ctx.turns[turn.turn_id] = turn
        ctx.queue.append(turn.turn_id)
        if key:
            ctx.keys[key] = turn.turn_id
        event = self._own_event(ctx, turn.turn_id, "input_received", self._codec.input_received(text))
        ws = WriteSet(turn_inserts=[turn_to_row(turn)], event_inserts=[event])
        ws.on_commit.append(lambda: self._published(ctx, [event]))
        ws.on_commit.append(lambda: self._dispatch(ctx))
        await self._commit(ws)
        return turn, False

    def _check_owner_limits(self, ctx: _SessionCtx) -> None:
        """Refuse a new turn past the owner's limits; other owners' work is never counted."""
        limits = self.limits
        active = queued = 0
        for session_id in self._by_owner[ctx.session.owner]:
            other = self._ctx.get(session_id)
            if other is None or other.deleted:
                continue
            queued += len(other.queue)
            active += bool(other.active or other.queue)
        if queued >= limits.max_queued_turns_per_owner:
            raise errors.LimitExceeded(
                "max_queued_turns_per_owner",
                limits.max_queued_turns_per_owner,
                f"{queued} turns of this owner are waiting for a worker; wait for some to start",
            )
        if not (ctx.active or ctx.queue) and active >= limits.max_active_sessions_per_owner:
            raise errors.LimitExceeded(
                "max_active_sessions_per_owner",
                limits.max_active_sessions_per_owner,
                f"{active} sessions of this owner have a turn queued or running; wait for one to finish",
            )

    async def _turn_for_key(self, ctx: _SessionCtx, key: str) -> Turn | None:
        turn_id = ctx.keys.get(key)
        if turn_id is None:
            found = await self._reader.find_turn_by_key(ctx.session.session_id, key)
            # Re-check after the await: a concurrent call may have stored the key meanwhile.
            turn_id = ctx.keys.get(key)
            if turn_id is None:
                return found
        return ctx.turns.get(turn_id) or await self._reader.get_turn(ctx.session.session_id, turn_id)

    async def get_turn(self, owner: str, session_id: str, turn_id: str) -> Turn:
        ctx = await self._require(session_id, owner)
        turn = ctx.turns.get(turn_id) or await self._reader.get_turn(session_id, turn_id)
        if turn is None:
            raise errors.TurnNotFound(session_id, turn_id)
        return turn

    async def interrupt_turn(self, owner: str, session_id: str, turn_id: str, reason: str) -> Turn:
        ctx = await self._require(session_id, owner)
        if not turn_id:
            if ctx.active is not None:
                turn_id = ctx.active.turn_id
            elif ctx.queue:
                turn_id = ctx.queue[0]
            else:
                raise errors.TurnAlreadyEnded(
                    f"session {session_id!r} has no queued or running turn", session_id=session_id
                )
        turn = ctx.turns.get(turn_id)
        if turn is None:
            stored = await self._reader.get_turn(session_id, turn_id)
            if stored is None:
                raise errors.TurnNotFound(session_id, turn_id)
            raise errors.TurnAlreadyEnded(
                f"turn {turn_id!r} already ended ({stored.state.name.lower()})", turn_id=turn_id
            )
        reason = reason or "interrupted by request"
        if turn.state == TurnState.RUNNING:
            holder = self._workers.get(turn.worker_id)
            if holder is not None:
                holder.push(InterruptMsg(session_id, turn_id, reason))
            return turn
        # Queued, or offered but not yet accepted: it never ran, so end it here.
        if turn.state == TurnState.OFFERED:
            self._withdraw_offer(ctx)
        if turn_id in ctx.queue:
            ctx.queue.remove(turn_id)
        await self._commit(self._end_turn_writes(ctx, turn, TurnState.INTERRUPTED, reason))
        return turn

    def _end_turn_writes(
        self, ctx: _SessionCtx, turn: Turn, state: TurnState, why: str, *, worker_lost: bool = False
    ) -> WriteSet:
        """End a turn with an event the control plane writes itself; the caller commits."""
        turn.state = state
        turn.end_time_us = now_us()
        turn.error_message = why
        ctx.turns.pop(turn.turn_id, None)
        if ctx.active is turn:
            ctx.active = None
        w = self._workers.get(turn.worker_id)
        if w is not None:
            w.in_flight.discard(turn.turn_id)
        interrupted = state == TurnState.INTERRUPTED
        body = self._codec.turn_interrupted(why) if interrupted else self._codec.turn_failed(why, worker_lost)
        event = self._own_event(ctx, turn.turn_id, "turn_interrupted" if interrupted else "turn_failed", body)
        ctx.session.update_time_us = turn.end_time_us
        ws = WriteSet(
            event_inserts=[event],
            turn_updates=[turn_update_row(turn)],
            session_updates=[session_update_row(ctx.session)],
        )
        expired = self._expire_requests(ctx, turn.turn_id, f"its turn ended: {why}", ws)
        events = [event, *expired]
        ws.event_inserts = events
        ws.on_commit.append(lambda: self._published(ctx, events))
        ws.on_commit.append(lambda: self._dispatch(ctx))
        return ws

    def _expire_requests(self, ctx: _SessionCtx, turn_id: str, why: str, ws: WriteSet) -> list[Event]:
        """The turn ended: its unanswered requests expire (never dangle) and every request of
        the turn leaves memory. Returns the RequestResolved events to store after the turn's
        terminal event; the caller adds them to `ws`."""
        events: list[Event] = []
        now = now_us()
        for request_id, request in list(ctx.requests.items()):
            if request.turn_id != turn_id:
                continue
            del ctx.requests[request_id]
            if request.state != RequestState.PENDING:
                continue
            request.state = RequestState.EXPIRED
            request.expire_reason = why
            request.resolve_time_us = now
            ws.request_updates.append(request_update_row(request))
            events.append(self._own_event(ctx, turn_id, "request_resolved", self._codec.request_resolved(request)))
        return events

    def _own_event(self, ctx: _SessionCtx, turn_id: str, kind: str, body: bytes) -> Event:
        ctx.last_seq += 1
        return Event(ctx.session.session_id, ctx.last_seq, turn_id, kind, body, now_us())

    # ----------------------------------------------------------------- fan-out

    def _published(self, ctx: _SessionCtx, events: list[Event]) -> None:
        recent = ctx.recent
        recent.extend(events)
        if len(recent) > 2 * _RECENT_EVENTS:
            del recent[: len(recent) - _RECENT_EVENTS]
        ctx.committed_seq = events[-1].seq
        changed, ctx.changed = ctx.changed, asyncio.Event()
        changed.set()

    async def subscribe(
        self, owner: str, session_id: str, after_seq: int, stop_at_end: bool
    ) -> AsyncIterator[list[Event]]:
        """Committed events after `after_seq`, in order, then live ones as they commit."""
        ctx = await self._require(session_id, owner)
        if after_seq > ctx.committed_seq:
            raise errors.CursorOutOfRange(
                f"cursor {after_seq} is past the end of session {session_id!r}'s log (last seq {ctx.committed_seq})",
                last_seq=str(ctx.committed_seq),
            )
        return self._follow(ctx, after_seq, stop_at_end)

    async def _follow(self, ctx: _SessionCtx, cursor: int, stop_at_end: bool) -> AsyncIterator[list[Event]]:
        while True:
            if ctx.deleted:
                if self._ctx.get(ctx.session.session_id) is ctx or ctx.session.session_id not in self._ctx:
                    raise errors.SessionNotFound(ctx.session.session_id)
                # The context was dropped after a failed write: continue on a fresh one.
                ctx = await self._require(ctx.session.session_id, ctx.session.owner)
            if cursor < ctx.committed_seq:
                recent = ctx.recent
                first = recent[0].seq if recent else None
                if first is not None and first <= cursor + 1:
                    start = cursor + 1 - first
                    batch = recent[start : start + _REPLAY_PAGE]
                else:
                    batch = await self._reader.events_after(ctx.session.session_id, cursor, _REPLAY_PAGE)
                    batch = [e for e in batch if e.seq <= ctx.committed_seq]
                if batch:
                    cursor = batch[-1].seq
                    yield batch
                    continue
            if stop_at_end:
                return
            changed = ctx.changed
            if cursor < ctx.committed_seq or ctx.deleted:
                continue
            await changed.wait()

    # ----------------------------------------------------------------- scheduling

    def _eligible(self, w: _WorkerConn, session: Session) -> bool:
        info = w.info
        return (
            info.owner == session.owner  # a worker only ever sees its owner's work
            and w.outbox is not None
            and not w.draining
            and session.runtime in info.runtimes
            and all(info.labels.get(k) == v for k, v in session.worker_selector.items())
        )

    def _most_free(
        self, session: Session, selector: dict[str, str] | None = None, *, only: str = "", exclude: str = ""
    ) -> _WorkerConn | None:
        """The eligible worker with a free slot and the most of them (also matching `selector`,
        being `only` when given, and not being `exclude`)."""
        best: _WorkerConn | None = None
        for w in self._workers.values():
            wid = w.info.worker_id
            if (
                w.free_slots > 0
                and (best is None or w.free_slots > best.free_slots)
                and wid != exclude
                and (not only or wid == only)
                and self._eligible(w, session)
                and all(w.info.labels.get(k) == v for k, v in (selector or {}).items())
            ):
                best = w
        return best

    def _dispatch(self, ctx: _SessionCtx) -> None:
        """Offer the session's next queued turn to a worker, if it has one and one is free."""
        if ctx.deleted or ctx.active is not None or not ctx.queue:
            self._waiting.pop(ctx.session.session_id, None)
            return
        session_id = ctx.session.session_id
        if ctx.restoring is not None:
            self._waiting[session_id] = None  # the restore's new holder takes the turn
            return
        lease = ctx.lease
        now = time.monotonic()
        target: _WorkerConn | None = None
        epoch = lease.epoch if lease else 0
        resume = True
        holder = self._workers.get(lease.worker_id) if lease is not None and lease.worker_id else None
        if lease is not None and lease.worker_id and now < ctx.lease_expires and self._sticky(ctx, holder, now):
            if holder is None or holder.outbox is None or holder.free_slots <= 0:
                # Sticky: the holder keeps the warm runtime; wait for it: for a slot, for it to
                # reconnect within the worker-dead grace, or until the sticky timeout.
                self._waiting[session_id] = None
                return
            target, resume = holder, False
        else:
            best = self._most_free(ctx.session)
            if best is None:
                self._waiting[session_id] = None
                return
            target, epoch = best, epoch + 1
        self._waiting.pop(session_id, None)
        ctx.sticky_since = 0.0
        turn = ctx.turns[ctx.queue.popleft()]
        turn.state = TurnState.OFFERED
        ctx.active = turn
        ctx.offer_epoch = epoch
        ctx.offered_to = target.info.worker_id
        target.in_flight.add(turn.turn_id)
        timeout = self.timings.offer_timeout_s
        ctx.offer_timer = asyncio.get_running_loop().call_later(timeout, self._offer_expired, ctx, turn.turn_id)
        target.push(
            OfferMsg(
                session_id=session_id,
                turn_id=turn.turn_id,
                input=turn.input,
                runtime=ctx.session.runtime,
                lease_epoch=epoch,
                resume_required=resume,
                last_seq=ctx.committed_seq,
                accept_deadline_us=now_us() + int(timeout * 1e6),
            )
        )

    def _sticky(self, ctx: _SessionCtx, holder: _WorkerConn | None, now: float) -> bool:
        """Whether the next turn should wait for the lease holder rather than move."""
        if holder is None or holder.outbox is None:
            return True  # moved by the worker-dead grace or by lease expiry, not here
        if holder.draining or ctx.session.session_id not in holder.sessions:
            # Not confirmed by the holder's current stream (for example a worker restarted
            # while the control plane was down): it has no warm runtime, so the session moves
            # at the next epoch, possibly back to the same worker, which then rehydrates.
            return False
        if holder.free_slots > 0:
            return True
        if not ctx.sticky_since:
            ctx.sticky_since = now
        if now - ctx.sticky_since < self.timings.sticky_timeout_s:
            return True
        log.info(
            "session %s waited %.1fs for its busy holder %s; moving it",
            ctx.session.session_id,
            now - ctx.sticky_since,
            holder.info.worker_id,
        )
        return False

    def _withdraw_offer(self, ctx: _SessionCtx) -> None:
        turn = ctx.active
        if turn is None or turn.state != TurnState.OFFERED:
            return
        if ctx.offer_timer:
            ctx.offer_timer.cancel()
            ctx.offer_timer = None
        w = self._workers.get(ctx.offered_to)
        if w is not None:
            w.in_flight.discard(turn.turn_id)
        ctx.offered_to = ""
        turn.state = TurnState.QUEUED
        ctx.active = None

    def _requeue_offer(self, ctx: _SessionCtx) -> None:
        turn = ctx.active
        self._withdraw_offer(ctx)
        if turn is not None:
            ctx.queue.appendleft(turn.turn_id)

    def _offer_expired(self, ctx: _SessionCtx, turn_id: str) -> None:
        if ctx.active is not None and ctx.active.turn_id == turn_id and ctx.active.state == TurnState.OFFERED:
            log.warning("offer of turn %s to %s was not accepted in time; requeued", turn_id, ctx.offered_to)
            self._requeue_offer(ctx)
            self._dispatch(ctx)

    def _dispatch_waiting(self) -> None:
        for session_id in list(self._waiting):
            ctx = self._ctx.get(session_id)
            if ctx is None:
                self._waiting.pop(session_id, None)
                continue
            self._dispatch(ctx)

    # ----------------------------------------------------------------- workers

    async def register(self, info: WorkerInfo) -> str:
        old = self._workers.get(info.worker_id)
        if old is not None and old.info.owner != info.owner:
            raise errors.PermissionDenied(
                f"worker id {info.worker_id!r} is taken by a worker of another credential; choose another --worker-id",
                worker_id=info.worker_id,
            )
        info.registration_id = new_id("reg")
        ws = WriteSet(
            worker_upserts=[
                {
                    "worker_id": info.worker_id,
                    "owner_id": info.owner,
                    "name": info.name,
                    "registration_id": info.registration_id,
                    "runtimes_json": _json(info.runtimes),
                    "labels_json": _json(info.labels),
                    "slots": info.slots,
                    "version": info.version,
                    "registered_at_us": info.registered_at_us,
                }
            ]
        )
        await self._commit(ws)
        old = self._workers.get(info.worker_id)
        conn = _WorkerConn(info)
        if old is not None:
            conn.sessions = old.sessions
            conn.in_flight = old.in_flight
            if old.outbox is not None:
                old.push(CloseMsg("replaced by a newer registration of the same worker"))
                old.outbox = None
                self._requeue_offers_of(old)
        self._workers[info.worker_id] = conn
        return info.registration_id

    def worker_owner(self, worker_id: str) -> str | None:
        """The owner of a worker registered since this control plane started, else None."""
        w = self._workers.get(worker_id)
        return w.info.owner if w is not None else None

    def _worker(self, worker_id: str, registration_id: str | None = None) -> _WorkerConn:
        w = self._workers.get(worker_id)
        if w is None or (registration_id is not None and w.info.registration_id != registration_id):
            raise errors.WorkerNotRegistered(
                f"worker {worker_id!r} has no current registration {registration_id or ''}; call Register again",
                worker_id=worker_id,
            )
        return w

    async def attach(
        self, worker_id: str, registration_id: str, held: list[tuple[str, int]], outbox: asyncio.Queue[WorkerMsg]
    ) -> list[tuple[str, int]]:
        """Bind a Lease stream to its registration. Returns the held leases it no longer has."""
        self._worker(worker_id, registration_id)
        for session_id, _ in held:  # after a control-plane restart they may not be loaded yet
            await self._load(session_id)
        w = self._worker(worker_id, registration_id)
        if w.outbox is not None:
            w.push(CloseMsg("replaced by a newer Lease stream"))
        w.outbox = outbox
        if w.dead_timer is not None:
            w.dead_timer.cancel()  # back within the grace: nothing moves
            w.dead_timer = None
        held_ids = {sid for sid, _ in held}
        # One pass over what this control plane says the worker holds (after a control-plane
        # restart, as loaded from the database): rebuild its slot count from the turns it runs,
        # and free the leases it no longer knows about (it restarted and lost those runtimes)
        # so those sessions move at once.
        for ctx in list(self._ctx.values()):
            if ctx.holder() != worker_id or ctx.deleted:
                continue
            session_id = ctx.session.session_id
            if session_id not in held_ids:
                self._spawn(
                    self._drop_lease(ctx, "the worker restarted and no longer holds the session", revoke=True),
                    f"tether-drop-lease-{session_id}",
                )
            elif ctx.active is not None and ctx.active.state == TurnState.RUNNING and ctx.active.worker_id == worker_id:
                w.in_flight.add(ctx.active.turn_id)
                for request in ctx.requests.values():  # answers it may have missed meanwhile
                    if request.state == RequestState.RESOLVED:
                        self._deliver_answer(ctx, request)
        lost = self._renew(w, held)
        log.info("worker %s attached (%d slots, runtimes %s)", worker_id, w.info.slots, w.info.runtimes)
        self._dispatch_waiting()
        return lost

    def detach(self, worker_id: str, outbox: asyncio.Queue[WorkerMsg]) -> None:
        w = self._workers.get(worker_id)
        if w is None or w.outbox is not outbox:
            return
        w.outbox = None
        self._requeue_offers_of(w)
        grace = self.timings.worker_dead_grace_s
        if w.dead_timer is not None:
            w.dead_timer.cancel()
        w.dead_timer = asyncio.get_running_loop().call_later(grace, self._worker_dead, w)
        log.info("worker %s detached; its sessions move unless it is back within %gs", worker_id, grace)

    def _worker_dead(self, w: _WorkerConn) -> None:
        w.dead_timer = None
        if self._workers.get(w.info.worker_id) is not w or w.outbox is not None:
            return
        why = (
            f"worker {w.info.worker_id} did not reconnect within the worker-dead grace "
            f"({self.timings.worker_dead_grace_s:g}s)"
        )
        for session_id in list(w.sessions):
            ctx = self._ctx.get(session_id)
            if ctx is not None and ctx.holder() == w.info.worker_id and not ctx.deleted:
                self._spawn(self._drop_lease(ctx, why, revoke=True), f"tether-worker-dead-{session_id}")
        w.sessions.clear()

    def _requeue_offers_of(self, w: _WorkerConn) -> None:
        for ctx in list(self._ctx.values()):
            restore = ctx.restoring
            if restore is not None and restore.worker_id == w.info.worker_id and not restore.granted:
                self._fail_restore(
                    ctx,
                    restore.epoch,
                    errors.NoWorker(
                        f"worker {w.info.worker_id!r} went away before taking session "
                        f"{ctx.session.session_id!r}; try again",
                        session_id=ctx.session.session_id,
                    ),
                )
            if ctx.active is not None and ctx.active.state == TurnState.OFFERED and ctx.offered_to == w.info.worker_id:
                self._requeue_offer(ctx)
                self._dispatch(ctx)

    def _renew(self, w: _WorkerConn, held: list[tuple[str, int]]) -> list[tuple[str, int]]:
        lost = []
        deadline = time.monotonic() + self.timings.lease_ttl_s
        for session_id, epoch in held:
            ctx = self._ctx.get(session_id)
            if (
                ctx is None
                or ctx.deleted
                or ctx.lease is None
                or ctx.lease.worker_id != w.info.worker_id
                or ctx.lease.epoch != epoch
            ):
                lost.append((session_id, epoch))
                continue
            ctx.lease_expires = deadline
            w.sessions.add(session_id)
        return lost

    def renew(self, worker_id: str, registration_id: str, held: list[tuple[str, int]]) -> RenewedMsg:
        w = self._worker(worker_id, registration_id)
        lost = self._renew(w, held)
        return RenewedMsg(now_us() + int(self.timings.lease_ttl_s * 1e6), lost)

    async def accept(self, worker_id: str, session_id: str, turn_id: str, epoch: int) -> None:
        w = self._worker(worker_id)
        ctx = self._ctx.get(session_id)
        if not turn_id:
            await self._accept_restore(w, ctx, session_id, epoch)
            return
        turn = ctx.active if ctx is not None else None
        if (
            ctx is None
            or turn is None
            or turn.turn_id != turn_id
            or turn.state != TurnState.OFFERED
            or ctx.offered_to != worker_id
            or ctx.offer_epoch != epoch
        ):
            w.in_flight.discard(turn_id)
            w.push(RevokeMsg(session_id, epoch, "the offer is no longer valid"))
            self._dispatch_waiting()
            return
        if ctx.offer_timer:
            ctx.offer_timer.cancel()
            ctx.offer_timer = None
        ws = WriteSet()
        now = now_us()
        self._grant_lease(ctx, w, epoch, ws, "moved to another worker")
        turn.state = TurnState.RUNNING
        turn.worker_id = worker_id
        turn.lease_epoch = epoch
        ws.turn_updates.append(turn_update_row(turn))
        grant = GrantMsg(session_id, turn_id, epoch, now + int(self.timings.lease_ttl_s * 1e6))
        ws.on_commit.append(lambda: w.push(grant))
        await self._commit(ws)

    def _grant_lease(self, ctx: _SessionCtx, w: _WorkerConn, epoch: int, ws: WriteSet, why_moved: str) -> None:
        """Give `w` the session's lease at `epoch` (renewing it if `w` already holds that epoch);
        a previous holder is revoked. The durable part is added to `ws`."""
        session_id = ctx.session.session_id
        lease = ctx.lease
        if lease is None or lease.epoch != epoch or lease.worker_id != w.info.worker_id:
            previous = self._workers.get(ctx.holder())
            if previous is not None and previous is not w:
                previous.sessions.discard(session_id)
                previous.push(RevokeMsg(session_id, lease.epoch if lease else 0, why_moved))
            ctx.lease = Lease(session_id, w.info.worker_id, epoch, now_us())
            ctx.acked_worker_seq = 0
            ws.lease_upserts.append(lease_to_row(ctx.lease))
        ctx.lease_expires = time.monotonic() + self.timings.lease_ttl_s
        w.sessions.add(session_id)

    def reject(self, worker_id: str, session_id: str, turn_id: str, reason: str) -> None:
        ctx = self._ctx.get(session_id)
        if not turn_id:
            restore = ctx.restoring if ctx is not None else None
            if ctx is not None and restore is not None and restore.worker_id == worker_id and not restore.granted:
                self._fail_restore(
                    ctx,
                    restore.epoch,
                    errors.NoWorker(
                        f"worker {worker_id!r} declined session {session_id!r}: {reason or 'no reason'}",
                        session_id=session_id,
                        worker_id=worker_id,
                    ),
                )
            return
        if ctx is None or ctx.active is None or ctx.active.turn_id != turn_id or ctx.offered_to != worker_id:
            return
        log.info("worker %s rejected turn %s: %s", worker_id, turn_id, reason or "no reason")
        self._requeue_offer(ctx)
        # Not re-offered at once: the rejecting worker may be the sticky holder and would get
        # it straight back. It waits for the next freed slot or the sweeper's next pass.
        self._waiting[session_id] = None

    async def release(self, worker_id: str, session_id: str, epoch: int, reason: str = "") -> None:
        ctx = self._ctx.get(session_id)
        if ctx is None or ctx.lease is None or ctx.lease.worker_id != worker_id or ctx.lease.epoch != epoch:
            return  # a stale release: the lease is not the worker's at that epoch any more
        w = self._workers.get(worker_id)
        if w is not None:
            w.sessions.discard(session_id)
        why = f"the worker released the session ({reason or 'no reason given'})"
        log.info("worker %s released session %s (epoch %d): %s", worker_id, session_id, epoch, reason or "no reason")
        await self._drop_lease(ctx, why, revoke=False)

    async def _drop_lease(self, ctx: _SessionCtx, why: str, *, revoke: bool) -> None:
        """Free the session's lease (keeping its epoch) so any worker may take it next.

        A turn never stays "running" without a live lease: it ends as failed, with `why`, in
        the same transaction that frees the lease.
        """
        lease = ctx.lease
        if lease is None or not lease.worker_id:
            return
        session_id = ctx.session.session_id
        w = self._workers.get(lease.worker_id)
        if w is not None:
            w.sessions.discard(session_id)
            if revoke:
                w.push(RevokeMsg(session_id, lease.epoch, why))
        ctx.lease = Lease(session_id, "", lease.epoch, now_us())
        self._fail_restore(
            ctx,
            lease.epoch,
            errors.RehydrationFailed(
                f"worker {lease.worker_id!r} gave session {session_id!r} up before confirming it: {why}",
                session_id=session_id,
                worker_id=lease.worker_id,
            ),
        )
        turn = ctx.active
        if turn is not None and turn.state == TurnState.RUNNING:
            message = f"the turn's worker {lease.worker_id} was lost: {why}"
            ws = self._end_turn_writes(ctx, turn, TurnState.FAILED, message, worker_lost=True)
        else:
            ws = WriteSet()
            ws.on_commit.append(lambda: self._dispatch(ctx))
        ws.lease_upserts.append(lease_to_row(ctx.lease))
        await self._commit(ws)
        if revoke:
            log.warning("lease of session %s (epoch %d) dropped: %s", session_id, lease.epoch, why)

    async def _sweep_leases(self) -> None:
        period = max(0.05, min(1.0, self.timings.lease_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for ctx in list(self._ctx.values()):
                if ctx.lease is not None and ctx.lease.worker_id and now >= ctx.lease_expires and not ctx.deleted:
                    try:
                        await self._drop_lease(ctx, "the lease was not renewed before its deadline", revoke=True)
                    except errors.DomainError:
                        log.exception("could not expire lease of %s", ctx.session.session_id)
            self._dispatch_waiting()

    def check_lease(self, worker_id: str, session_id: str, epoch: int, owner: str) -> _SessionCtx:
        """The session, if `worker_id` (of `owner`) holds its lease at `epoch`; else LeaseLost.
        For another owner's session the answer is the one for a session that does not exist."""
        ctx = self._ctx.get(session_id)
        if ctx is None or ctx.deleted or ctx.session.owner != owner:
            self._fenced_calls[worker_id] += 1
            raise errors.LeaseLost(session_id, epoch, 0)
        lease = ctx.lease
        if lease is None or lease.worker_id != worker_id or lease.epoch != epoch:
            self._fenced_calls[worker_id] += 1
            raise errors.LeaseLost(session_id, epoch, lease.epoch if lease else 0)
        return ctx

    def fenced_calls(self, worker_id: str) -> int:
        """How many of the worker's writes, resumes and snapshots fencing refused (LEASE_LOST)."""
        return self._fenced_calls[worker_id]

    async def load_for_worker(self, worker_id: str, session_id: str, epoch: int, owner: str) -> _SessionCtx:
        """Like check_lease, but loads the session first (after a control-plane restart)."""
        await self._load(session_id)
        return self.check_lease(worker_id, session_id, epoch, owner)

    def ingest(
        self, worker_id: str, session_id: str, epoch: int, events: list[IncomingEvent], owner: str
    ) -> tuple[asyncio.Future[None] | None, int, int, list[Event]]:
        """Fence, dedup, number and queue a batch of worker events.

        Returns the commit future (None when every event was a duplicate), the acked worker
        watermark and last seq that hold once it resolves, and the new events.
        """
        ctx = self.check_lease(worker_id, session_id, epoch, owner)
        limits = self.limits
        bucket = ctx.events_bucket
        if bucket is None:
            bucket = ctx.events_bucket = TokenBucket(
                limits.events_per_second_per_session, limits.event_burst_per_session
            )
        if not bucket.spend(len(events)):
            raise errors.LimitExceeded(
                "events_per_second_per_session",
                limits.events_per_second_per_session,
                f"session {session_id!r} is writing events faster than allowed; resend them after a pause",
            )
        expected = ctx.acked_worker_seq + 1
        fresh = [e for e in events if e.worker_seq >= expected]
        for i, e in enumerate(fresh):
            if e.worker_seq != expected + i:
                raise errors.InvalidArgument(
                    "events.worker_seq",
                    f"worker_seq must continue at {expected + i} with no gaps; got {e.worker_seq}",
                )
        if not fresh:
            return None, ctx.acked_worker_seq, ctx.committed_seq, []
        active = ctx.active
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
            self._check_opened(ctx, [e.request for e in opened])
        ws = WriteSet()
        now = now_us()
        stored: list[Event] = []
        seq = ctx.last_seq
        for e in fresh:
            seq += 1
            ev = Event(session_id, seq, e.turn_id, e.kind, e.body, now, epoch, e.worker_seq)
            stored.append(ev)
        ws.event_inserts = stored
        ctx.last_seq = seq
        ctx.acked_worker_seq = fresh[-1].worker_seq
        last = fresh[-1]
        session = ctx.session
        for e in opened:  # checked above: each carries a request
            request = e.request
            assert request is not None
            request.session_id, request.turn_id = session_id, e.turn_id
            request.state = RequestState.PENDING
            request.create_time_us = request.create_time_us or now  # as the event says
            ctx.requests[request.request_id] = request
            ws.request_inserts.append(request_to_row(request))
        for e in fresh:
            if e.kind == "turn_started" and e.runtime_thread_id and e.runtime_thread_id != session.runtime_thread_id:
                session.runtime_thread_id = e.runtime_thread_id
                session.update_time_us = now
                ws.session_updates.append(session_update_row(session))
        if last.kind in TERMINAL_KINDS and active is not None:
            active.state = TERMINAL_KINDS[last.kind]
            active.end_time_us = now
            active.exit_code = last.exit_code
            active.error_message = last.message
            ctx.turns.pop(active.turn_id, None)
            ctx.active = None
            session.update_time_us = now
            ws.turn_updates.append(turn_update_row(active))
            ws.session_updates.append(session_update_row(session))
            expired = self._expire_requests(
                ctx, active.turn_id, f"its turn ended ({active.state.name.lower()}) before an answer", ws
            )
            if expired:
                stored.extend(expired)  # the same list as ws.event_inserts
                seq = ctx.last_seq
            w = self._workers.get(worker_id)
            if w is not None:
                w.in_flight.discard(active.turn_id)
            ws.on_commit.append(lambda: self._dispatch(ctx))
            ws.on_commit.append(self._dispatch_waiting)
        ws.on_commit.insert(0, lambda: self._published(ctx, stored))
        return self._writer.submit(ws), ctx.acked_worker_seq, seq, stored

    def _check_opened(self, ctx: _SessionCtx, opened: list[PendingRequest | None]) -> None:
        seen: set[str] = set()
        for request in opened:
            if request is None:
                raise errors.InvalidArgument("events.body.request_opened.request", "the request is missing")
            rid = request.request_id
            if not _REQUEST_ID.match(rid):
                raise errors.InvalidArgument(
                    "events.body.request_opened.request.request_id",
                    f'{rid!r} is not a request id: "req_" and 26 characters of [0-9A-Z]',
                )
            if rid in ctx.requests or rid in seen:
                raise errors.InvalidArgument(
                    "events.body.request_opened.request.request_id", f"request {rid!r} already exists in the session"
                )
            seen.add(rid)

    # ----------------------------------------------------------------- pending requests

    async def respond_to_request(
        self, owner: str, session_id: str, request_id: str, answer: dict[str, Any], answer_json: str
    ) -> PendingRequest:
        """Resolve a pending request exactly once and send the answer to the turn's worker."""
        ctx = await self._require(session_id, owner)
        request = ctx.requests.get(request_id)
        if request is None:
            stored = await self._reader.get_request(session_id, request_id)
            request = ctx.requests.get(request_id)  # it may have arrived during the read
            if request is None:
                if stored is None or ctx.deleted:
                    raise errors.RequestNotFound(session_id, request_id)
                raise _already_resolved(stored)
        if request.state != RequestState.PENDING:
            raise _already_resolved(request)
        check_answer(request, answer)
        # Decided here, before any await: a second answer racing this one sees RESOLVED.
        request.state = RequestState.RESOLVED
        request.response_json = answer_json
        request.resolve_time_us = now_us()
        event = self._own_event(ctx, request.turn_id, "request_resolved", self._codec.request_resolved(request))
        ws = WriteSet(event_inserts=[event], request_updates=[request_update_row(request)])
        ws.on_commit.append(lambda: self._published(ctx, [event]))
        ws.on_commit.append(lambda: self._deliver_answer(ctx, request))
        await self._commit(ws)
        return request

    def _deliver_answer(self, ctx: _SessionCtx, request: PendingRequest) -> None:
        """Push an answer to the worker running its turn; one that is not connected now gets it
        when its Lease stream attaches again."""
        turn = ctx.active
        if turn is None or turn.turn_id != request.turn_id or turn.state != TurnState.RUNNING:
            return
        w = self._workers.get(turn.worker_id)
        if w is not None and ctx.holder() == turn.worker_id:
            w.push(AnswerMsg(ctx.session.session_id, request.turn_id, request.request_id, request.response_json))

    async def list_requests(self, owner: str, session_id: str, state: RequestState | None) -> list[PendingRequest]:
        ctx = await self._require(session_id, owner)
        stored = {r.request_id: r for r in await self._reader.list_requests(session_id, state)}
        # Memory is ahead of the database while a commit runs.
        for request in ctx.requests.values():
            if state is None or request.state == state:
                stored[request.request_id] = request
            else:
                stored.pop(request.request_id, None)
        return sorted(stored.values(), key=lambda r: (r.create_time_us, r.request_id))

    # ----------------------------------------------------------------- drain

    def worker_draining(self, worker_id: str) -> None:
        """The worker said it is draining: no more offers; its idle sessions with queued work
        move now, the rest when it releases them at the end of its drain."""
        w = self._workers.get(worker_id)
        if w is None or w.draining:
            return
        w.draining = True
        log.info("worker %s is draining", worker_id)
        self._requeue_offers_of(w)
        for session_id in list(w.sessions):
            ctx = self._ctx.get(session_id)
            if ctx is not None:
                self._dispatch(ctx)
        self._dispatch_waiting()

    def drain_worker(self, owner: str | None, worker_id: str, grace_s: float | None) -> WorkerStatus:
        """Drain one of `owner`'s workers (any owner's when `owner` is None: an admin)."""
        w = self._workers.get(worker_id)
        if w is None or (owner is not None and w.info.owner != owner):
            raise errors.WorkerNotFound(
                f"no worker {worker_id!r} has registered since this control plane started", worker_id=worker_id
            )
        if w.outbox is None:
            raise errors.WorkerNotConnected(
                f"worker {worker_id!r} is not connected; a worker drains on SIGTERM too",
                worker_id=worker_id,
            )
        w.push(DrainMsg(now_us() + int(grace_s * 1e6) if grace_s is not None else 0))
        self.worker_draining(worker_id)
        return self._status(w)

    def _status(self, w: _WorkerConn) -> WorkerStatus:
        return WorkerStatus(w.info, len(w.in_flight), len(w.sessions), w.outbox is not None, w.draining)

    def worker_statuses(self, owner: str | None) -> list[WorkerStatus]:
        """`owner`'s workers (every owner's when None: an admin), connected first."""
        statuses = [self._status(w) for w in self._workers.values() if owner is None or w.info.owner == owner]
        statuses.sort(key=lambda st: (not st.connected, st.info.worker_id))
        return statuses

    # ----------------------------------------------------------------- restore

    async def restore_session(
        self, owner: str, session_id: str, selector: dict[str, str], worker_id: str
    ) -> SessionView:
        """Move an idle session onto another worker and rehydrate it there, now."""
        ctx = await self._require(session_id, owner)
        if ctx.session.archived:
            raise errors.SessionArchived(f"session {session_id!r} is archived", session_id=session_id)
        if ctx.active is not None or ctx.queue:
            raise errors.SessionBusy(
                f"session {session_id!r} has a turn queued or running; interrupt it or wait for "
                "it to end, then restore",
                session_id=session_id,
            )
        if ctx.restoring is not None:
            raise errors.SessionBusy(f"session {session_id!r} is already being restored", session_id=session_id)
        holder = ctx.holder()
        if worker_id:
            w = self._workers.get(worker_id)
            if w is None or w.info.owner != owner:
                raise errors.WorkerNotFound(f"no worker {worker_id!r} is registered", worker_id=worker_id)
            if w.outbox is None:
                raise errors.WorkerNotConnected(f"worker {worker_id!r} is not connected", worker_id=worker_id)
            if worker_id == holder:
                raise errors.InvalidArgument("worker_id", f"worker {worker_id!r} already holds the session")
        wanted = {**ctx.session.worker_selector, **selector}
        best = self._most_free(ctx.session, selector, only=worker_id, exclude=holder)
        if best is None:
            raise errors.NoWorker(
                f"no connected worker other than the holder runs {ctx.session.runtime!r}"
                + (f" with labels {wanted}" if wanted else "")
                + " and has a free slot",
                session_id=session_id,
            )
        epoch = (ctx.lease.epoch if ctx.lease else 0) + 1
        restore = _Restore(best.info.worker_id, epoch, asyncio.get_running_loop().create_future())
        ctx.restoring = restore
        best.in_flight.add(restore.slot)
        timeout = self.timings.offer_timeout_s
        ctx.offer_timer = asyncio.get_running_loop().call_later(
            timeout,
            lambda: self._fail_restore(
                ctx,
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
                runtime=ctx.session.runtime,
                lease_epoch=epoch,
                resume_required=True,
                last_seq=ctx.committed_seq,
                accept_deadline_us=now_us() + int(timeout * 1e6),
                restore_only=True,
            )
        )
        try:
            async with asyncio.timeout(timeout + self.timings.snapshot_timeout_s):
                await asyncio.shield(restore.done)
        except TimeoutError:
            self._fail_restore(
                ctx,
                epoch,
                errors.Timeout(
                    f"worker {restore.worker_id!r} took session {session_id!r} but did not confirm "
                    f"its rehydration within {self.timings.snapshot_timeout_s:g}s",
                    worker_id=restore.worker_id,
                ),
            )
            await restore.done
        return self._view(ctx)

    async def _accept_restore(self, w: _WorkerConn, ctx: _SessionCtx | None, session_id: str, epoch: int) -> None:
        restore = ctx.restoring if ctx is not None else None
        if (
            ctx is None
            or restore is None
            or restore.granted
            or restore.worker_id != w.info.worker_id
            or restore.epoch != epoch
        ):
            w.in_flight.discard(_restore_slot(epoch))
            w.push(RevokeMsg(session_id, epoch, "the offer is no longer valid"))
            return
        if ctx.offer_timer:
            ctx.offer_timer.cancel()
            ctx.offer_timer = None
        restore.granted = True
        w.in_flight.discard(restore.slot)
        ws = WriteSet()
        self._grant_lease(ctx, w, epoch, ws, "restored onto another worker")
        grant = GrantMsg(session_id, "", epoch, now_us() + int(self.timings.lease_ttl_s * 1e6))
        ws.on_commit.append(lambda: w.push(grant))
        await self._commit(ws)

    def _fail_restore(self, ctx: _SessionCtx, epoch: int, error: errors.DomainError) -> None:
        restore = ctx.restoring
        if restore is None or restore.epoch != epoch:
            return
        ctx.restoring = None
        if ctx.offer_timer:
            ctx.offer_timer.cancel()
            ctx.offer_timer = None
        w = self._workers.get(restore.worker_id)
        if w is not None:
            w.in_flight.discard(restore.slot)
        if restore.granted and ctx.lease is not None and ctx.lease.epoch == epoch and ctx.lease.worker_id:
            # Granted but never confirmed: the lease must not stay with a runtime that is not
            # there. Free it; the next turn rehydrates wherever it lands.
            self._spawn(
                self._drop_lease(ctx, str(error), revoke=True), f"tether-restore-failed-{ctx.session.session_id}"
            )
        if not restore.done.done():
            restore.done.set_exception(error)
        self._dispatch(ctx)

    def _finish_restore(self, ctx: _SessionCtx, restore: _Restore) -> None:
        if ctx.restoring is restore:
            ctx.restoring = None
        if not restore.done.done():
            restore.done.set_result(None)
        log.info("session %s restored onto %s (epoch %d)", ctx.session.session_id, restore.worker_id, restore.epoch)
        self._dispatch(ctx)

    # ----------------------------------------------------------------- snapshots & resume

    async def latest_snapshot(self, owner: str, session_id: str) -> Snapshot:
        await self._require(session_id, owner)
        snap = await self._reader.latest_snapshot(session_id)
        if snap is None:
            raise errors.SnapshotNotFound(
                f"session {session_id!r} has no snapshot yet; CreateSnapshot makes one",
                session_id=session_id,
            )
        return snap

    async def request_snapshot(self, owner: str, session_id: str) -> Snapshot:
        ctx = await self._require(session_id, owner)
        w = self._workers.get(ctx.holder())
        if w is None or w.outbox is None or ctx.lease is None:
            raise errors.NoWorker(
                f"no connected worker holds session {session_id!r}'s runtime; send input to "
                "start it on a worker, or read the latest snapshot with GetSnapshot",
                session_id=session_id,
            )
        request_id = new_id("req")
        fut: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._snapshot_waiters[request_id] = (session_id, fut)
        w.push(SnapshotRequestMsg(session_id, ctx.lease.epoch, request_id))
        try:
            async with asyncio.timeout(self.timings.snapshot_timeout_s):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise errors.Timeout(
                f"worker {w.info.worker_id!r} did not upload a snapshot within {self.timings.snapshot_timeout_s:g}s",
                worker_id=w.info.worker_id,
            ) from None
        finally:
            self._snapshot_waiters.pop(request_id, None)

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
    ) -> Snapshot:
        ctx = await self.load_for_worker(worker_id, session_id, epoch, owner)
        if seq > ctx.committed_seq:
            raise errors.InvalidArgument(
                "seq", f"the snapshot claims seq {seq} but the log ends at {ctx.committed_seq}"
            )
        snap = Snapshot(
            snapshot_id=new_id("snp"),
            session_id=session_id,
            seq=seq,
            worker_id=worker_id,
            lease_epoch=epoch,
            runtime=ctx.session.runtime,
            runtime_metadata_json=metadata_json or "{}",
            history=history,
            history_count=history_count,
            create_time_us=now_us(),
        )
        ws = WriteSet(snapshot_inserts=[snapshot_to_row(snap)], snapshot_prunes=[session_id])
        thread_id = _runtime_thread_id(metadata_json)
        if thread_id and thread_id != ctx.session.runtime_thread_id:
            # A rehydrated runtime has a new thread id; the session id never changes.
            ctx.session.runtime_thread_id = thread_id
            ctx.session.update_time_us = snap.create_time_us
            ws.session_updates.append(session_update_row(ctx.session))
        sid, waiter = self._snapshot_waiters.get(request_id, ("", None)) if request_id else ("", None)
        if waiter is not None and sid == session_id:
            ws.on_commit.append(lambda: waiter.done() or waiter.set_result(snap))
        restore = ctx.restoring
        if restore is not None and restore.granted and restore.epoch == epoch and restore.worker_id == worker_id:
            ws.on_commit.append(lambda: self._finish_restore(ctx, restore))
        await self._commit(ws)
        return snap

    async def resume_source(
        self, worker_id: str, session_id: str, epoch: int, owner: str
    ) -> tuple[Snapshot | None, list[Event], int]:
        """What a resuming worker reads: the latest snapshot, the inputs at or before its
        watermark of turns it does not cover yet, and the log end to read up to after it."""
        ctx = await self.load_for_worker(worker_id, session_id, epoch, owner)
        upto = ctx.committed_seq
        snap = await self._reader.latest_snapshot(session_id)
        carried = await self._reader.inputs_open_at(session_id, snap.seq) if snap is not None else []
        return snap, carried, upto

    async def events_between(self, session_id: str, after_seq: int, upto: int) -> AsyncIterator[list[Event]]:
        """Stored events in (after_seq, upto], a page at a time; the next page is read while
        the caller sends the current one."""
        pending: asyncio.Task[list[Event]] | None = asyncio.ensure_future(
            self._reader.events_after(session_id, after_seq, _RESUME_PAGE)
        )
        try:
            while pending is not None:
                page = [e for e in await pending if e.seq <= upto]
                pending = None
                if not page:
                    return
                if page[-1].seq < upto:
                    pending = asyncio.ensure_future(self._reader.events_after(session_id, page[-1].seq, _RESUME_PAGE))
                yield page
        finally:
            if pending is not None:
                pending.cancel()


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True)


_REQUEST_ID = re.compile(r"^req_[0-9A-Z]{26}$")


def _already_resolved(request: PendingRequest) -> errors.RequestAlreadyResolved:
    if request.state == RequestState.EXPIRED:
        why = f"expired: {request.expire_reason}"
    else:
        why = "was already answered; each request takes exactly one answer"
    return errors.RequestAlreadyResolved(
        f"request {request.request_id!r} {why}", session_id=request.session_id, request_id=request.request_id
    )


def _runtime_thread_id(metadata_json: str) -> str:
    try:
        metadata = json.loads(metadata_json or "{}")
    except ValueError:
        return ""
    value = metadata.get("runtime_thread_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and len(value) <= 256 else ""
