"""What the hub and its callers exchange: the timings a worker lives by, the messages pushed
on a worker's Lease stream, and the typed results of the hub's calls.

Plain values only; `api/` turns each into its contract message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import NamedTuple

from .model import Checkpoint, Event, PendingRequest, Session, SessionState, Snapshot, WorkerInfo

__all__ = [
    "AnswerMsg",
    "CloseMsg",
    "DrainMsg",
    "GrantMsg",
    "IncomingEvent",
    "IngestResult",
    "InterruptMsg",
    "OfferMsg",
    "RenewedMsg",
    "ResumeSource",
    "Retention",
    "RetentionPolicy",
    "RevokeMsg",
    "SessionView",
    "SnapshotRequestMsg",
    "Timings",
    "WorkerMsg",
    "WorkerStatus",
]


@dataclass(frozen=True)
class Timings:
    """Every timing a worker lives by; the server is the authority and sends them at Register.

    Three clocks: connection liveness (a Lease stream silent for `liveness_timeout_s` is
    closed), worker-dead (a worker whose stream closed and that did not open a new one within
    `worker_dead_grace_s` has its sessions moved), and lease expiry (a lease not renewed for
    `lease_ttl_s` moves its session, whatever the connection looks like).
    """

    heartbeat_interval_s: float = 2.0
    # How often a worker holding no lease and running no turn renews (0: heartbeat_interval_s);
    # such a stream may stay silent for 3 x this, and HTTP/2 keepalive checks it meanwhile.
    idle_heartbeat_interval_s: float = 20.0
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
    # How long a session that is not live (no open turn, no lease held, no subscriber, no
    # restore) stays in memory after it was last used; then it is dropped and reloaded from the
    # database when next asked for.
    session_idle_s: float = 300.0
    # Server-side only (not sent to workers). How long a worker has to end an interrupted turn
    # before the control plane ends it as interrupted and revokes the worker's lease.
    interrupt_grace_s: float = 10.0
    # A turn running this long is interrupted (then the grace applies); 0: no maximum.
    max_turn_s: float = 0.0
    # A queued turn that no connected worker can take (none offers its runtime, has its labels
    # or is not draining) fails NO_WORKER after this long; 0: it waits as long as it takes.
    queue_timeout_s: float = 0.0
    # Such a turn says why it waits (its waiting_reason and a turn_waiting event) once the reason
    # has held this long, so a worker still starting or reconnecting after a restart does not
    # make every turn sent meanwhile announce a wait that ends a moment later.
    waiting_notice_s: float = 2.0
    # Server-side only. How often the control plane looks for scheduled deletions that are due.
    deletion_sweep_s: float = 1.0
    # Server-side only. How long the acknowledgement of a worker's stored events may wait for
    # the stream's next batches, so one ack covers them all (a live turn's deltas each leave in
    # a message of their own). A batch that ends a turn, or holds only events already stored, is
    # acknowledged at once, as is whatever is unacknowledged when the worker closes the stream.
    event_ack_delay_s: float = 0.25
    # Server-side only, a dispatch policy rather than a timing: a sticky turn for a warm holder
    # that announces the granted_offer feature is stored running in its input's commit and its
    # offer carries the grant (no AcceptOffer round). Off by default: a turn granted to a worker
    # that died before the control plane noticed fails WORKER_LOST instead of moving to another
    # worker (docs/operations.md, "Granted offers").
    grant_with_offer: bool = False


@dataclass(frozen=True)
class RetentionPolicy:
    """How long an idle session (no turn open, no event) is kept as it is: archived after
    `archive_idle_s`, deleted after `delete_idle_s`; and how long events are kept once the
    session's newest snapshot covers them (`compact_events_after_s`). 0 turns each off."""

    archive_idle_s: float = 0.0
    delete_idle_s: float = 0.0
    # Events older than this and covered by the session's newest snapshot are dropped (0: kept).
    compact_events_after_s: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.archive_idle_s or self.delete_idle_s or self.compact_events_after_s)


@dataclass(frozen=True)
class Retention:
    """The server's retention: a default policy, per-owner overrides, and how often the
    retention sweep runs."""

    default: RetentionPolicy = RetentionPolicy()
    by_owner: tuple[tuple[str, RetentionPolicy], ...] = ()
    sweep_s: float = 60.0

    @property
    def active(self) -> bool:
        return self.default.active or any(p.active for _, p in self.by_owner)


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
    output_schema: str = ""
    trace_context: tuple[tuple[str, str], ...] = ()  # the turn's trace context headers, when traced
    granted: GrantMsg | None = None  # the grant, sent with the offer (nothing to accept)


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
    resync: bool = False  # the renewal's digest did not match: the worker sends its list


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
class IngestResult:
    """What `Hub.ingest` decided for one batch of worker events.

    `acked_worker_seq` and `last_seq` hold once `committed` resolves; `committed` is None when
    every event was a duplicate (nothing to store, the watermarks already hold).
    """

    committed: asyncio.Future[None] | None
    acked_worker_seq: int
    last_seq: int
    events: list[Event]  # the new events, numbered, in log order


class ResumeSource(NamedTuple):
    """What a resuming worker reads: the latest snapshot, the inputs at or before its watermark
    of turns it does not cover yet, and the log end to read up to after it."""

    snapshot: Snapshot | None
    carried: list[Event]
    upto: int
    checkpoint: Checkpoint | None = None  # the workspace to restore before the runtime starts
    # With no checkpoint: whether the workspace is empty (the session's workspace has moved
    # with it since it was created) or unknown (made before: leave the worker's files alone).
    tracks_workspace: bool = False


@dataclass(frozen=True)
class SessionView:
    session: Session
    state: SessionState
    last_seq: int
    active_turn_id: str
    worker_id: str
    lease_epoch: int
    waiting_reason: str = ""
    last_activity_us: int = 0  # when the log last grew (0: never; the creation counts)


@dataclass(frozen=True)
class WorkerStatus:
    info: WorkerInfo
    running_turns: int
    held_sessions: int
    connected: bool
    draining: bool
