"""Conversion between `tether.v1` protobufs and the SDK's dataclasses.

Small pure functions, one per message; the client calls them and nothing else touches protobuf
field names.
"""

from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf import timestamp_pb2
from tether.v1 import admin_service_pb2, resources_pb2

from ._models import (
    Event,
    EventKind,
    HistoryItem,
    HistoryItemRole,
    Session,
    SessionState,
    Snapshot,
    Turn,
    TurnState,
    WorkerStatus,
)

__all__ = [
    "event_from_proto",
    "history_item_from_proto",
    "session_from_proto",
    "session_state_to_proto",
    "snapshot_from_proto",
    "timestamp_from_proto",
    "turn_from_proto",
    "worker_status_from_proto",
]

_STREAM_NAMES = {
    resources_pb2.OUTPUT_STREAM_STDOUT: "stdout",
    resources_pb2.OUTPUT_STREAM_STDERR: "stderr",
}


def timestamp_from_proto(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """An aware UTC datetime, or None for an unset (zero) timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=timezone.utc)


def _enum(cls, value: int):
    try:
        return cls(value)
    except ValueError:  # a value added to the contract after this SDK was built
        return cls.UNSPECIFIED


def session_state_to_proto(state: SessionState | str | int | None) -> int:
    """The proto number for a state given as enum, name ("idle") or number; None means any."""
    if state is None:
        return resources_pb2.SESSION_STATE_UNSPECIFIED
    if isinstance(state, str):
        return int(SessionState[state.upper()])
    return int(SessionState(state))


def session_from_proto(msg: resources_pb2.Session) -> Session:
    return Session(
        session_id=msg.session_id,
        runtime=msg.runtime,
        state=_enum(SessionState, msg.state),
        worker_selector=dict(msg.worker_selector),
        labels=dict(msg.labels),
        create_time=timestamp_from_proto(msg.create_time),
        update_time=timestamp_from_proto(msg.update_time),
        last_seq=msg.last_seq,
        active_turn_id=msg.active_turn_id,
        worker_id=msg.worker_id,
        lease_epoch=msg.lease_epoch,
        runtime_thread_id=msg.runtime_thread_id,
        turn_count=msg.turn_count,
        raw=msg,
    )


def turn_from_proto(msg: resources_pb2.Turn, *, deduplicated: bool = False) -> Turn:
    return Turn(
        turn_id=msg.turn_id,
        session_id=msg.session_id,
        input=msg.input,
        state=_enum(TurnState, msg.state),
        idempotency_key=msg.idempotency_key,
        create_time=timestamp_from_proto(msg.create_time),
        end_time=(
            timestamp_from_proto(msg.end_time) if msg.HasField("end_time") else None
        ),
        worker_id=msg.worker_id,
        lease_epoch=msg.lease_epoch,
        exit_code=msg.exit_code,
        error_message=msg.error_message,
        deduplicated=deduplicated,
        raw=msg,
    )


def _event_body_fields(body: resources_pb2.EventBody) -> tuple[EventKind, dict]:
    name = body.WhichOneof("kind")
    if name == "input_received":
        return EventKind.INPUT_RECEIVED, {"input": body.input_received.input}
    if name == "turn_started":
        started = body.turn_started
        return EventKind.TURN_STARTED, {
            "worker_id": started.worker_id,
            "runtime_thread_id": started.runtime_thread_id,
        }
    if name == "output":
        return EventKind.OUTPUT, {
            "text": body.output.text,
            "stream": _STREAM_NAMES.get(body.output.stream, ""),
        }
    if name == "turn_completed":
        return EventKind.TURN_COMPLETED, {"exit_code": body.turn_completed.exit_code}
    if name == "turn_failed":
        failed = body.turn_failed
        return EventKind.TURN_FAILED, {
            "error_message": failed.error_message,
            "worker_lost": failed.worker_lost,
        }
    if name == "turn_interrupted":
        return EventKind.TURN_INTERRUPTED, {"reason": body.turn_interrupted.reason}
    if name == "runtime":
        return EventKind.RUNTIME, {
            "runtime_event_name": body.runtime.name,
            "runtime_json": body.runtime.json,
        }
    return EventKind.UNKNOWN, {}


def event_from_proto(msg: resources_pb2.Event) -> Event:
    kind, fields = _event_body_fields(msg.body)
    return Event(
        session_id=msg.session_id,
        seq=msg.seq,
        turn_id=msg.turn_id,
        create_time=timestamp_from_proto(msg.create_time),
        kind=kind,
        lease_epoch=msg.lease_epoch,
        raw=msg,
        **fields,
    )


def history_item_from_proto(msg: resources_pb2.HistoryItem) -> HistoryItem:
    return HistoryItem(
        role=_enum(HistoryItemRole, msg.role),
        text=msg.text,
        turn_id=msg.turn_id,
        raw_json=msg.raw_json,
        raw=msg,
    )


def snapshot_from_proto(msg: resources_pb2.Snapshot) -> Snapshot:
    return Snapshot(
        session_id=msg.session_id,
        snapshot_id=msg.snapshot_id,
        seq=msg.seq,
        history=[history_item_from_proto(item) for item in msg.history],
        runtime=msg.runtime,
        runtime_metadata_json=msg.runtime_metadata_json,
        create_time=timestamp_from_proto(msg.create_time),
        worker_id=msg.worker_id,
        raw=msg,
    )


def worker_status_from_proto(msg: admin_service_pb2.WorkerStatus) -> WorkerStatus:
    return WorkerStatus(
        worker_id=msg.worker_id,
        name=msg.name,
        runtimes=list(msg.runtimes),
        labels=dict(msg.labels),
        slots=msg.slots,
        running_turns=msg.running_turns,
        held_sessions=msg.held_sessions,
        connected=msg.connected,
        draining=msg.draining,
        register_time=timestamp_from_proto(msg.register_time),
        version=msg.version,
        raw=msg,
    )
