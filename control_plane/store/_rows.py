"""Row mapping, both ways: domain records to the column dicts the writer stores, and the rows
the reader gets back to domain records. The only place that knows both shapes; nothing above
`store/` sees a row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..domain.model import (
    Checkpoint,
    Event,
    Lease,
    PendingRequest,
    RequestKind,
    RequestState,
    Session,
    Snapshot,
    Turn,
    TurnState,
    WorkerInfo,
)
from ..domain.ports import Changes


@dataclass
class WriteSet:
    """Rows to write in one unit. Lists hold column dicts; updates carry full mutable state."""

    session_inserts: list[dict[str, Any]] = field(default_factory=list)
    turn_inserts: list[dict[str, Any]] = field(default_factory=list)
    event_inserts: list[Event] = field(default_factory=list)  # the hottest table: no dicts
    snapshot_inserts: list[dict[str, Any]] = field(default_factory=list)
    snapshot_prunes: list[str] = field(default_factory=list)  # session ids: keep the newest few
    checkpoint_inserts: list[dict[str, Any]] = field(default_factory=list)
    worker_upserts: list[dict[str, Any]] = field(default_factory=list)
    lease_upserts: list[dict[str, Any]] = field(default_factory=list)
    session_updates: list[dict[str, Any]] = field(default_factory=list)
    turn_updates: list[dict[str, Any]] = field(default_factory=list)
    request_inserts: list[dict[str, Any]] = field(default_factory=list)
    request_updates: list[dict[str, Any]] = field(default_factory=list)
    session_deletes: list[str] = field(default_factory=list)
    event_compactions: list[tuple[str, int]] = field(default_factory=list)
    on_commit: list[Callable[[], None]] = field(default_factory=list)

    def merge(self, other: WriteSet) -> None:
        for name in WRITE_SET_FIELDS:
            getattr(self, name).extend(getattr(other, name))


WRITE_SET_FIELDS = [f for f in WriteSet.__dataclass_fields__ if f != "on_commit"]


def session_from_row(r: Any, turn_count: int = 0, last_event_us: int = 0) -> Session:
    """A session row; `last_event_us` is its last event's time (0: none), which counts as an
    update."""
    return Session(
        session_id=r.session_id,
        runtime=r.runtime,
        worker_selector=json.loads(r.worker_selector_json),
        labels=json.loads(r.labels_json),
        create_time_us=r.create_time_us,
        update_time_us=max(r.update_time_us, last_event_us or 0),
        archived=bool(r.archived),
        runtime_thread_id=r.runtime_thread_id,
        turn_count=turn_count or 0,
        owner=r.owner_id,
        forked_from_session_id=r.forked_from_session_id,
        forked_from_turn_id=r.forked_from_turn_id,
        title=r.title,
        delete_time_us=r.delete_time_us,
        compacted_seq=r.compacted_seq,
        tracks_workspace=bool(r.tracks_workspace),
    )


def session_to_row(s: Session) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "owner_id": s.owner,
        "runtime": s.runtime,
        "worker_selector_json": json.dumps(s.worker_selector, sort_keys=True),
        "labels_json": json.dumps(s.labels, sort_keys=True),
        "archived": s.archived,
        "runtime_thread_id": s.runtime_thread_id,
        "create_time_us": s.create_time_us,
        "update_time_us": s.update_time_us,
        "forked_from_session_id": s.forked_from_session_id,
        "forked_from_turn_id": s.forked_from_turn_id,
        "title": s.title,
        "delete_time_us": s.delete_time_us,
        "compacted_seq": s.compacted_seq,
        "tracks_workspace": s.tracks_workspace,
    }


_SESSION_MUTABLE = (
    "archived",
    "runtime_thread_id",
    "update_time_us",
    "title",
    "labels_json",
    "delete_time_us",
    "compacted_seq",
)
_TURN_MUTABLE = (
    "worker_id",
    "lease_epoch",
    "exit_code",
    "error_message",
    "end_time_us",
    "reverted",
    "start_time_us",
    "last_seq",
    "usage",
    "final_message",
    "result_json",
)


def session_update_row(s: Session) -> dict[str, Any]:
    row = session_to_row(s)
    return {"b_session_id": s.session_id, **{k: row[k] for k in _SESSION_MUTABLE}}


def request_to_row(r: PendingRequest) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "session_id": r.session_id,
        "turn_id": r.turn_id,
        "kind": int(r.kind),
        "method": r.method,
        "params_json": r.params_json,
        "summary": r.summary,
        "item_id": r.item_id,
        "available_json": json.dumps(r.available_decisions),
        "state": int(r.state),
        "response_json": r.response_json,
        "expire_reason": r.expire_reason,
        "create_time_us": r.create_time_us,
        "resolve_time_us": r.resolve_time_us,
    }


def request_update_row(r: PendingRequest) -> dict[str, Any]:
    return {
        "b_request_id": r.request_id,
        "state": int(r.state),
        "response_json": r.response_json,
        "expire_reason": r.expire_reason,
        "resolve_time_us": r.resolve_time_us,
    }


def request_from_row(r: Any) -> PendingRequest:
    try:
        kind = RequestKind(r.kind)
    except ValueError:
        kind = RequestKind.OTHER
    return PendingRequest(
        request_id=r.request_id,
        session_id=r.session_id,
        turn_id=r.turn_id,
        kind=kind,
        method=r.method,
        params_json=r.params_json,
        summary=r.summary,
        item_id=r.item_id,
        available_decisions=list(json.loads(r.available_json or "[]")),
        state=RequestState(r.state),
        create_time_us=r.create_time_us,
        response_json=r.response_json,
        expire_reason=r.expire_reason,
        resolve_time_us=r.resolve_time_us,
    )


def turn_from_row(r: Any) -> Turn:
    return Turn(
        turn_id=r.turn_id,
        session_id=r.session_id,
        ordinal=r.ordinal,
        input=r.input,
        state=TurnState(r.state),
        create_time_us=r.create_time_us,
        idempotency_key=r.idempotency_key or "",
        worker_id=r.worker_id,
        lease_epoch=r.lease_epoch,
        exit_code=r.exit_code,
        error_message=r.error_message,
        end_time_us=r.end_time_us,
        reverted=bool(r.reverted),
        start_time_us=r.start_time_us,
        first_seq=r.first_seq,
        last_seq=r.last_seq,
        usage=bytes(r.usage or b""),
        final_message=r.final_message,
        output_schema=r.output_schema,
        result_json=r.result_json,
    )


def turn_to_row(t: Turn) -> dict[str, Any]:
    return {
        "turn_id": t.turn_id,
        "session_id": t.session_id,
        "ordinal": t.ordinal,
        "input": t.input,
        "idempotency_key": t.idempotency_key or None,
        "state": int(t.state),
        "worker_id": t.worker_id,
        "lease_epoch": t.lease_epoch,
        "exit_code": t.exit_code,
        "error_message": t.error_message,
        "create_time_us": t.create_time_us,
        "end_time_us": t.end_time_us,
        "reverted": t.reverted,
        "start_time_us": t.start_time_us,
        "first_seq": t.first_seq,
        "last_seq": t.last_seq,
        "usage": t.usage,
        "final_message": t.final_message,
        "output_schema": t.output_schema,
        "result_json": t.result_json,
    }


def turn_update_row(t: Turn) -> dict[str, Any]:
    row = turn_to_row(t)
    # OFFERED is not durable: an offer dies with the process, so it is stored as QUEUED.
    state = TurnState.QUEUED if t.state == TurnState.OFFERED else t.state
    return {"b_turn_id": t.turn_id, "state": int(state), **{k: row[k] for k in _TURN_MUTABLE}}


def lease_to_row(lease: Lease) -> dict[str, Any]:
    return {
        "session_id": lease.session_id,
        "worker_id": lease.worker_id,
        "epoch": lease.epoch,
        "granted_at_us": lease.granted_at_us,
    }


def snapshot_to_row(s: Snapshot) -> dict[str, Any]:
    return {
        "snapshot_id": s.snapshot_id,
        "session_id": s.session_id,
        "seq": s.seq,
        "worker_id": s.worker_id,
        "lease_epoch": s.lease_epoch,
        "runtime": s.runtime,
        "runtime_metadata_json": s.runtime_metadata_json,
        "history": s.history,
        "history_count": s.history_count,
        "create_time_us": s.create_time_us,
    }


def snapshot_from_row(r: Any) -> Snapshot:
    return Snapshot(
        snapshot_id=r.snapshot_id,
        session_id=r.session_id,
        seq=r.seq,
        worker_id=r.worker_id,
        lease_epoch=r.lease_epoch,
        runtime=r.runtime,
        runtime_metadata_json=r.runtime_metadata_json,
        history=r.history,
        history_count=r.history_count,
        create_time_us=r.create_time_us,
    )


def worker_to_row(info: WorkerInfo) -> dict[str, Any]:
    return {
        "worker_id": info.worker_id,
        "owner_id": info.owner,
        "name": info.name,
        "registration_id": info.registration_id,
        "runtimes_json": json.dumps(info.runtimes, sort_keys=True),
        "labels_json": json.dumps(info.labels, sort_keys=True),
        "slots": info.slots,
        "version": info.version,
        "registered_at_us": info.registered_at_us,
    }


def checkpoint_to_row(c: Checkpoint) -> dict[str, Any]:
    return {
        "session_id": c.session_id,
        "seq": c.seq,
        "turn_id": c.turn_id,
        "chunk_digests": ",".join(c.chunk_digests),
        "file_count": c.file_count,
        "total_bytes": c.total_bytes,
        "create_time_us": c.create_time_us,
    }


def checkpoint_from_row(r: Any) -> Checkpoint:
    return Checkpoint(
        session_id=r.session_id,
        seq=r.seq,
        turn_id=r.turn_id,
        chunk_digests=tuple(d for d in r.chunk_digests.split(",") if d),
        file_count=r.file_count,
        total_bytes=r.total_bytes,
        create_time_us=r.create_time_us,
    )


def rows_of(changes: Changes) -> WriteSet:
    """The rows `changes` store, as they are now (later changes to the records do not count)."""
    return WriteSet(
        session_inserts=[session_to_row(s) for s in changes.session_inserts],
        turn_inserts=[turn_to_row(t) for t in changes.turn_inserts],
        event_inserts=changes.event_inserts,  # events go to the driver as they are
        snapshot_inserts=[snapshot_to_row(s) for s in changes.snapshot_inserts],
        snapshot_prunes=changes.snapshot_prunes,
        checkpoint_inserts=[checkpoint_to_row(c) for c in changes.checkpoint_inserts],
        worker_upserts=[worker_to_row(w) for w in changes.worker_upserts],
        lease_upserts=[lease_to_row(lease) for lease in changes.lease_upserts],
        session_updates=[session_update_row(s) for s in changes.session_updates],
        turn_updates=[turn_update_row(t) for t in changes.turn_updates],
        request_inserts=[request_to_row(r) for r in changes.request_inserts],
        request_updates=[request_update_row(r) for r in changes.request_updates],
        session_deletes=changes.session_deletes,
        event_compactions=changes.event_compactions,
        on_commit=changes.on_commit,
    )
