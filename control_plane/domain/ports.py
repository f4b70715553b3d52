"""Ports: what the domain needs from storage and from the edge, as Protocols.

`store/` implements the storage ports (`SessionReader`, `GroupCommitWriter`, `CredentialStore`),
`api/` the `BodyCodec` and `observability/` the `Observer` and the `TurnTracer`; the composition root (`control_plane/_server.py`) wires them. The
domain hands the writer `Changes`, a unit of domain records, and never sees a row: mapping
records to rows is the store's business. Tests use in-memory fakes of these ports
(tests/helpers/fake_store.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from .access import ApiKey, WorkerToken
from .model import Checkpoint, Event, Lease, PendingRequest, RequestState, Session, Snapshot, Turn, WorkerInfo

__all__ = [
    "BodyCodec",
    "Changes",
    "CredentialStore",
    "GroupCommitWriter",
    "LeaseMove",
    "ListedSession",
    "LoadedSession",
    "NullObserver",
    "NullTurnTracer",
    "Observer",
    "SessionQuery",
    "SessionReader",
    "TurnTracer",
    "WriteFailed",
]


class WriteFailed(Exception):
    """The transaction holding a set of changes failed; nothing in it was stored."""


@dataclass
class Changes:
    """What one decision changes durably, as domain records, written in one transaction.

    The writer maps the records to rows when the changes are submitted, so a record changed
    after submission does not change what this unit stores. Updates carry the record's full
    mutable state. `on_commit` callbacks run after the commit, in submission order across
    every unit (the writer commits in queue order).
    """

    session_inserts: list[Session] = field(default_factory=list)
    turn_inserts: list[Turn] = field(default_factory=list)
    event_inserts: list[Event] = field(default_factory=list)
    snapshot_inserts: list[Snapshot] = field(default_factory=list)
    snapshot_prunes: list[str] = field(default_factory=list)  # session ids: keep the newest few
    checkpoint_inserts: list[Checkpoint] = field(default_factory=list)
    worker_upserts: list[WorkerInfo] = field(default_factory=list)
    lease_upserts: list[Lease] = field(default_factory=list)
    session_updates: list[Session] = field(default_factory=list)
    turn_updates: list[Turn] = field(default_factory=list)
    request_inserts: list[PendingRequest] = field(default_factory=list)
    request_updates: list[PendingRequest] = field(default_factory=list)
    session_deletes: list[str] = field(default_factory=list)
    # (session id, seq): delete the session's events up to and including seq (retention).
    event_compactions: list[tuple[str, int]] = field(default_factory=list)
    on_commit: list[Callable[[], None]] = field(default_factory=list)

    def absorb(self, other: Changes) -> None:
        """Add `other`'s records and callbacks after this unit's own, to commit as one."""
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))


@dataclass
class LoadedSession:
    """Everything needed to rebuild a session's in-memory state."""

    session: Session
    last_seq: int
    lease: Lease | None
    open_turns: list[Turn]
    last_worker_seq: int  # highest worker_seq stored under the lease's epoch
    open_requests: list[PendingRequest] = field(default_factory=list)  # of the open turns
    last_event_us: int = 0  # when the last event was stored (0: the log is empty)


@dataclass(frozen=True)
class SessionQuery:
    """One page of one owner's sessions (ListSessions), as the reader runs it.

    Sessions sort by id (ids sort by creation time) or by last activity (the time of the last
    event, else creation), ties broken by id; a page continues after the previous page's last
    session, named by `after_id` (and `after_activity_us` when sorted by activity).
    """

    owner: str
    limit: int
    archived: bool | None = None
    active: bool | None = None  # with a turn open (True) or without (False)
    runtime: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # all of them, with equal values
    by_activity: bool = False
    descending: bool = True
    after_id: str = ""
    after_activity_us: int = 0


class ListedSession(NamedTuple):
    session: Session
    has_open_turn: bool
    last_activity_us: int


class SessionReader(Protocol):
    """The reads the hub makes; memory is the truth for loaded sessions, so these serve
    loading, pages of history and records that have left memory."""

    async def load_session(self, session_id: str) -> LoadedSession | None: ...

    async def list_sessions(self, query: SessionQuery) -> list[ListedSession]:
        """Up to `query.limit` sessions that match, in the query's order."""
        ...

    async def list_turns(self, session_id: str, limit: int, after_ordinal: int, descending: bool) -> list[Turn]:
        """Up to `limit` of the session's turns by ordinal, after `after_ordinal` (0: from the
        start) in the given direction."""
        ...

    async def get_turn(self, session_id: str, turn_id: str) -> Turn | None: ...
    async def find_turn_by_key(self, session_id: str, key: str) -> Turn | None: ...
    async def events_after(self, session_id: str, after_seq: int, limit: int) -> list[Event]: ...

    async def inputs_open_at(self, session_id: str, upto: int) -> list[Event]:
        """The input_received events at or before `upto` of turns that had not ended by then."""
        ...

    async def latest_snapshot(self, session_id: str) -> Snapshot | None: ...

    async def get_snapshot(self, session_id: str, snapshot_id: str) -> Snapshot | None:
        """One stored snapshot of the session (None: not stored, or another session's)."""
        ...

    async def list_snapshots(self, session_id: str) -> list[Snapshot]:
        """The session's kept snapshots, oldest first."""
        ...

    async def sessions_due_for_deletion(self, now_us: int, limit: int) -> list[tuple[str, str]]:
        """(session id, owner) of up to `limit` sessions whose scheduled deletion is due."""
        ...

    async def idle_sessions(
        self, cutoff_us: int, *, owner: str | None, exclude_owners: tuple[str, ...], include_archived: bool, limit: int
    ) -> list[tuple[str, str]]:
        """(session id, owner) of up to `limit` sessions, longest idle first, with no turn open
        and no event since `cutoff_us` (nor created since): `owner`'s (None: any but `exclude_owners`),
        archived ones only when `include_archived`."""
        ...

    async def compaction_candidates(
        self, cutoff_us: int, *, owner: str | None, exclude_owners: tuple[str, ...], limit: int
    ) -> list[tuple[str, str]]:
        """(session id, owner) of up to `limit` sessions whose oldest kept event is older than
        `cutoff_us` and covered by a snapshot (owner filters as for `idle_sessions`)."""
        ...

    async def compaction_facts(self, session_id: str, cutoff_us: int) -> tuple[int, int, int]:
        """(the newest snapshot's seq W, the first seq of the earliest turn still open at W, or
        0 when none is, and the last seq at or below W stored before `cutoff_us`)."""
        ...

    async def session_ids_of(self, owner: str, limit: int) -> list[str]:
        """Up to `limit` ids of `owner`'s sessions."""
        ...

    async def ids_taken(self, session_id: str, turn_ids: list[str]) -> list[str]:
        """Which of these ids a stored session or turn has already."""
        ...

    async def turns_upto(self, session_id: str, ordinal: int) -> list[Turn]:
        """The session's turns with an ordinal at or below `ordinal`, in order."""
        ...

    async def last_completed_turn(self, session_id: str) -> Turn | None: ...

    async def turns_after(self, session_id: str, ordinal: int) -> list[Turn]:
        """The session's turns with an ordinal above `ordinal`, in order."""
        ...

    async def get_request(self, session_id: str, request_id: str) -> PendingRequest | None: ...
    async def list_requests(self, session_id: str, state: RequestState | None) -> list[PendingRequest]: ...
    async def sessions_with_open_turns(self) -> list[str]: ...

    async def current_checkpoint(self, session_id: str) -> Checkpoint | None:
        """The session's newest workspace checkpoint whose turn was not reverted."""
        ...

    async def list_checkpoints(self, session_id: str) -> list[Checkpoint]:
        """The session's workspace checkpoints, by seq."""
        ...

    async def turn_ended_upto(self, session_id: str, seq: int) -> str:
        """The id of the session's last turn whose terminal event is at or before `seq` ("")."""
        ...

    async def checkpoint_chunks_of(self, owner: str) -> set[str]:
        """The manifest chunks every checkpoint of the owner's sessions names."""
        ...


class GroupCommitWriter(Protocol):
    """Every durable change goes through one writer, which commits in submission order."""

    # Called after a failed transaction, before its waiters hear of it, so the owner of
    # in-memory state can rebuild it from what is durable.
    on_failure: Callable[[], None] | None

    def submit(self, changes: Changes) -> asyncio.Future[None]:
        """Queue `changes`; the future resolves once they are durable (after their on_commit
        callbacks ran) or fails with WriteFailed."""
        ...


# Why a lease left the worker holding it (Observer.lease_moved); a fixed set, so a metric
# labelled with it stays bounded.
LeaseMove = Literal[
    "reassigned",  # granted to another worker for a turn (holder draining, busy past the sticky timeout)
    "restore",  # RestoreSession moved it
    "released",  # the worker released it (end of a drain, a cooled runtime, a failed rehydration)
    "lease_expired",  # not renewed before its deadline
    "worker_lost",  # its worker did not reconnect within the worker-dead grace
    "worker_restarted",  # its worker came back without it
    "restore_failed",  # a restore granted it but was never confirmed
    "turn_deadline",  # the turn outlived the interrupt grace or the maximum turn duration
    "reverted",  # RevertSession took it back
]


class Observer(Protocol):
    """What the domain reports as it works, for operators (control_plane/observability turns it
    into metrics). Called on the event loop, some of it on the turn path: an implementation
    only counts, never blocks. Nothing passed names a session, turn, worker or owner."""

    def turn_started(self, queued_s: float) -> None:
        """A worker accepted a turn `queued_s` after its input was queued."""
        ...

    def turn_ended(self, runtime: str, outcome: str, ran_s: float | None) -> None:
        """A turn of a session on `runtime` ended (`outcome`: completed, failed, interrupted)
        after running `ran_s` (None: it never ran)."""
        ...

    def lease_granted(self, kind: str) -> None:
        """A worker was granted a session's lease at a new epoch, for a turn or a restore."""
        ...

    def lease_moved(self, reason: LeaseMove) -> None: ...

    def rehydrated(self, kind: str, seconds: float) -> None:
        """A worker rebuilt a session's runtime `seconds` after its grant: the session's first
        lease ("start"), a later one for a turn ("move"), or a RestoreSession ("restore")."""
        ...

    def events_ingested(self, count: int) -> None:
        """A worker's batch added `count` events to a session's log."""
        ...

    def events_published(self, lag_s: float) -> None:
        """Committed events reached their subscribers `lag_s` after they were numbered."""
        ...


class NullObserver:
    """An Observer that reports nowhere (the default)."""

    def turn_started(self, queued_s: float) -> None:
        pass

    def turn_ended(self, runtime: str, outcome: str, ran_s: float | None) -> None:
        pass

    def lease_granted(self, kind: str) -> None:
        pass

    def lease_moved(self, reason: LeaseMove) -> None:
        pass

    def rehydrated(self, kind: str, seconds: float) -> None:
        pass

    def events_ingested(self, count: int) -> None:
        pass

    def events_published(self, lag_s: float) -> None:
        pass


class TurnTracer(Protocol):
    """Traces turns (control_plane/observability implements it with OpenTelemetry): one trace
    per turn, from its input to its end. Called on the event loop; a turn it has not seen
    queued (one reloaded after a restart) is ignored."""

    def queued(self, turn: Turn, runtime: str, caller: Mapping[str, str] | None = None) -> None:
        """The turn's input is durable: its trace starts (at the turn's create time). `caller`:
        the W3C trace context headers the input came with; the trace then continues the
        caller's (the turn's span is a child of the caller's span)."""
        ...

    def offered(self, turn: Turn, worker_id: str, epoch: int) -> dict[str, str]:
        """The turn is offered to `worker_id`: the trace context headers the offer carries."""
        ...

    def withdrawn(self, turn: Turn) -> None:
        """The offer went unanswered or was declined: the turn is queued again."""
        ...

    def accepted(self, turn: Turn) -> None:
        """The worker accepted the offer: the turn runs."""
        ...

    def ended(self, turn: Turn) -> None:
        """The turn ended (its state, end time and error are set): its trace ends."""
        ...

    def abandoned(self, turn: Turn) -> None:
        """The control plane let go of the open turn without ending it (its session was
        deleted, or dropped after a failed write and reloaded): its trace ends as abandoned."""
        ...


class NullTurnTracer:
    """A TurnTracer that traces nothing (the default)."""

    def queued(self, turn: Turn, runtime: str, caller: Mapping[str, str] | None = None) -> None:
        pass

    def offered(self, turn: Turn, worker_id: str, epoch: int) -> dict[str, str]:
        return {}

    def withdrawn(self, turn: Turn) -> None:
        pass

    def accepted(self, turn: Turn) -> None:
        pass

    def ended(self, turn: Turn) -> None:
        pass

    def abandoned(self, turn: Turn) -> None:
        pass


class CredentialStore(Protocol):
    """The credentials `api/` authenticates callers with and the admin calls manage."""

    async def find_api_key(self, secret: str) -> ApiKey | None: ...
    async def find_worker_token(self, secret: str) -> WorkerToken | None: ...

    async def worker_id_bound(self, worker_id: str) -> bool:
        """Whether a token (revoked or not) owns `worker_id`, so no other caller may use it."""
        ...

    async def pair(self, code: str, name: str) -> tuple[WorkerToken, str] | None:
        """Consume a pairing code for a new worker token and its secret; None if the code is
        unknown, expired or used."""
        ...

    async def create_pairing_code(self, owner: str, ttl_us: int, max_pending: int) -> tuple[str, int]: ...
    async def list_worker_tokens(self, owner: str) -> list[WorkerToken]: ...
    async def revoke_worker_token(self, owner: str, token_id: str) -> WorkerToken: ...

    async def purge_owner(self, owner: str) -> tuple[int, int, int]:
        """Delete the owner's worker tokens, worker registrations and pairing codes; returns
        how many of each."""
        ...


class BodyCodec(Protocol):
    """Encodes the event bodies the control plane writes itself (api/ provides it)."""

    def input_received(self, text: str) -> bytes: ...
    def turn_failed(self, message: str, worker_lost: bool = False) -> bytes: ...
    def turn_interrupted(self, reason: str) -> bytes: ...
    def turn_waiting(self, reason: str) -> bytes: ...
    def request_resolved(self, request: PendingRequest) -> bytes: ...

    def session_reverted(self, turn_id: str, reverted_turn_ids: list[str]) -> bytes: ...

    def rebind_history(self, history: bytes, turn_ids: dict[str, str]) -> bytes:
        """A snapshot's stored history with the turn ids it names replaced per `turn_ids`."""
        ...

    def history_of_turns(self, history: bytes, turn_ids: dict[str, str]) -> tuple[bytes, int]:
        """A snapshot's stored history cut to the items of the turns in `turn_ids` (and items of
        no turn), their ids replaced per `turn_ids`, with the count of items kept."""
        ...

    def agent_message_text(self, body: bytes) -> str | None:
        """The text of an item_completed event's item when it is an agent message, else None."""
        ...

    def rebind(
        self,
        kind: str,
        body: bytes,
        session_id: str,
        turn_id: str,
        request_ids: dict[str, str],
        turn_ids: dict[str, str] | None = None,
    ) -> bytes:
        """The body of an event copied into another session (ForkSession, ImportSession): the
        ids it names (its session, its turn, the pending requests in `request_ids`, other turns
        per `turn_ids`) replaced by the copy's."""
        ...


class BlobStore(Protocol):
    """Where workspace blobs (file contents, manifest chunks) live: content-addressed by their
    SHA-256 (lowercase hex), scoped by owner, streamed in and out in chunks so no blob is ever
    whole in memory. The embedded default keeps them in the database (store/_blobs.py); an
    object store can take over behind the same calls (docs/workspaces.md). `missing` counts as
    a use of the blobs it finds: the collector spares what was used within its grace."""

    async def missing(self, owner: str, digests: list[str], *, touch: bool = True) -> list[str]:
        """The digests of `digests` the owner has no stored blob for, in order; with `touch`,
        the ones it has are marked used now."""
        ...

    async def put(self, owner: str, blobs: AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]) -> None:
        """Store each (digest, size, its chunks) of `blobs`; a blob becomes visible (to
        `missing`, `read`) only once all of it is durable and its SHA-256 is `digest`, else
        `BlobMismatch` is raised and nothing of that blob is kept. Storing a blob the owner
        already has stores the same bytes again."""
        ...

    def read(self, owner: str, digests: list[str]) -> AsyncIterator[tuple[str, bytes]]:
        """(digest, piece) of the stored blobs `digests`, each blob's pieces in order and one
        blob after another (`KeyError` naming one the owner has no blob for)."""
        ...

    async def usage(self, owner: str) -> int:
        """Bytes of blobs the owner stores."""
        ...

    async def collect(self, owner: str, keep: set[str], used_before_us: int) -> tuple[int, int]:
        """Delete the owner's blobs not in `keep` that no checkpoint has used (stored them, or
        found them held with `missing`) since `used_before_us`; returns how many and bytes."""
        ...

    async def owners(self) -> list[str]:
        """The owners that store blobs."""
        ...

    async def delete_owner(self, owner: str) -> int:
        """Delete every blob of the owner; returns how many there were."""
        ...


class ChunkInfo(NamedTuple):
    """What a workspace manifest chunk holds, as the control plane checks it."""

    file_count: int  # files and symlinks
    total_bytes: int
    file_digests: tuple[str, ...]
    file_sizes: tuple[int, ...] = ()  # each file's size as its entry says, beside file_digests


class ChunkCodec(Protocol):
    def parse_chunk(self, data: bytes) -> ChunkInfo:
        """A stored manifest chunk's entries, checked (paths inside the workspace, no device
        files or setuid bits); `ValueError` saying what is wrong otherwise."""
        ...


class BlobMismatch(Exception):
    """A blob's content is not what its digest or size says."""
