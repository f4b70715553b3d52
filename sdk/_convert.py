"""Conversion between `tether.v1` protobufs and the SDK's dataclasses, and the JSON shape of an
answer to a pending request.

Small pure functions, one per message; the client calls them and nothing else touches protobuf
field names.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from google.protobuf import timestamp_pb2

from tether.v1 import admin_service_pb2, resources_pb2

from ._models import (
    DeltaKind,
    Event,
    EventKind,
    FileChange,
    HistoryItem,
    HistoryItemRole,
    Item,
    ItemKind,
    PendingRequest,
    RequestKind,
    RequestState,
    Session,
    SessionState,
    Snapshot,
    TokenUsage,
    Turn,
    TurnState,
    WorkerStatus,
    WorkerToken,
    WorkspaceRestored,
)

__all__ = [
    "answer_json",
    "event_from_proto",
    "file_change_from_proto",
    "history_item_from_proto",
    "item_from_proto",
    "pending_request_from_proto",
    "request_state_to_proto",
    "session_from_proto",
    "session_state_to_proto",
    "snapshot_from_proto",
    "timestamp_from_proto",
    "token_usage_from_proto",
    "turn_from_proto",
    "worker_status_from_proto",
    "worker_token_from_proto",
]

_Enum = TypeVar("_Enum", bound=enum.IntEnum)

_STREAM_NAMES = {
    resources_pb2.OUTPUT_STREAM_STDOUT: "stdout",
    resources_pb2.OUTPUT_STREAM_STDERR: "stderr",
}


def timestamp_from_proto(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """An aware UTC datetime, or None for an unset (zero) timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def _enum(cls: type[_Enum], value: int) -> _Enum:
    try:
        return cls(value)
    except ValueError:  # a value added to the contract after this SDK was built
        return cls(0)  # UNSPECIFIED, zero in every enum of the contract


# The SDK's enums carry the contract's numbers, so turning one into its proto enum is a cast.


def session_state_to_proto(state: SessionState | str | int | None) -> resources_pb2.SessionState:
    """The proto number for a state given as enum, name ("idle") or number; None means any."""
    if state is None:
        return resources_pb2.SESSION_STATE_UNSPECIFIED
    if isinstance(state, str):
        return cast(resources_pb2.SessionState, int(SessionState[state.upper()]))
    return cast(resources_pb2.SessionState, int(SessionState(state)))


def request_state_to_proto(state: RequestState | str | int | None) -> resources_pb2.RequestState:
    """The proto number for a request state given as enum, name ("pending") or number; None
    (or "all") means any."""
    if state is None or (isinstance(state, str) and state.lower() == "all"):
        return resources_pb2.REQUEST_STATE_UNSPECIFIED
    if isinstance(state, str):
        return cast(resources_pb2.RequestState, int(RequestState[state.upper()]))
    return cast(resources_pb2.RequestState, int(RequestState(state)))


def answer_json(
    response_json: str | None,
    decision: str | None,
    answers: Mapping[str, Sequence[str]] | None,
) -> str:
    """The `response_json` of a RespondToRequest given exactly one form of the answer: the
    JSON itself, an approval's decision, or user input as question id -> answers."""
    given = sum(form is not None for form in (response_json, decision, answers))
    if given != 1:
        raise ValueError(f"give exactly one of response_json, decision or answers (got {given})")
    if response_json is not None:
        return response_json
    if decision is not None:
        return json.dumps({"decision": decision})
    assert answers is not None
    shaped: dict[str, dict[str, list[str]]] = {}
    for question_id, texts in answers.items():
        # A bare string would otherwise become one answer per character.
        if isinstance(texts, str):
            raise TypeError(f"answers[{question_id!r}] must be a list of strings, got a str")
        shaped[question_id] = {"answers": [str(text) for text in texts]}
    return json.dumps({"answers": shaped})


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
        owner=msg.owner,
        waiting_reason=msg.waiting_reason,
        forked_from_session_id=msg.forked_from_session_id,
        forked_from_turn_id=msg.forked_from_turn_id,
        title=msg.title,
        last_activity_time=timestamp_from_proto(msg.last_activity_time) if msg.HasField("last_activity_time") else None,
        delete_time=timestamp_from_proto(msg.delete_time) if msg.HasField("delete_time") else None,
        compacted_seq=msg.compacted_seq,
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
        end_time=(timestamp_from_proto(msg.end_time) if msg.HasField("end_time") else None),
        worker_id=msg.worker_id,
        lease_epoch=msg.lease_epoch,
        exit_code=msg.exit_code,
        error_message=msg.error_message,
        deduplicated=deduplicated,
        waiting_reason=msg.waiting_reason,
        interrupt_request_time=(
            timestamp_from_proto(msg.interrupt_request_time) if msg.HasField("interrupt_request_time") else None
        ),
        reverted=msg.reverted,
        start_time=timestamp_from_proto(msg.start_time) if msg.HasField("start_time") else None,
        first_seq=msg.first_seq,
        last_seq=msg.last_seq,
        usage=token_usage_from_proto(msg.usage) if msg.HasField("usage") else None,
        final_message=msg.final_message,
        output_schema=msg.output_schema,
        result_json=msg.result_json,
        raw=msg,
    )


def file_change_from_proto(msg: resources_pb2.FileChange) -> FileChange:
    return FileChange(path=msg.path, kind=msg.kind, diff=msg.diff, raw=msg)


def item_from_proto(msg: resources_pb2.Item) -> Item:
    return Item(
        item_id=msg.item_id,
        kind=_enum(ItemKind, msg.kind),
        text=msg.text,
        command=msg.command,
        cwd=msg.cwd,
        status=msg.status,
        exit_code=msg.exit_code if msg.HasField("exit_code") else None,
        aggregated_output=msg.aggregated_output,
        changes=[file_change_from_proto(change) for change in msg.changes],
        raw_json=msg.raw_json,
        raw=msg,
    )


def token_usage_from_proto(msg: resources_pb2.TokenUsage) -> TokenUsage:
    return TokenUsage(
        last_input_tokens=msg.last_input_tokens,
        last_output_tokens=msg.last_output_tokens,
        total_input_tokens=msg.total_input_tokens,
        total_cached_input_tokens=msg.total_cached_input_tokens,
        total_output_tokens=msg.total_output_tokens,
        total_reasoning_output_tokens=msg.total_reasoning_output_tokens,
        total_tokens=msg.total_tokens,
        model_context_window=msg.model_context_window,
        raw=msg,
    )


def pending_request_from_proto(msg: resources_pb2.PendingRequest) -> PendingRequest:
    return PendingRequest(
        request_id=msg.request_id,
        session_id=msg.session_id,
        turn_id=msg.turn_id,
        kind=_enum(RequestKind, msg.kind),
        method=msg.method,
        params_json=msg.params_json,
        summary=msg.summary,
        item_id=msg.item_id,
        state=_enum(RequestState, msg.state),
        response_json=msg.response_json,
        expire_reason=msg.expire_reason,
        create_time=timestamp_from_proto(msg.create_time),
        resolve_time=timestamp_from_proto(msg.resolve_time),
        available_decisions=list(msg.available_decisions),
        raw=msg,
    )


def _item_fields(msg: resources_pb2.ItemStarted | resources_pb2.ItemCompleted) -> dict[str, Any]:
    item = item_from_proto(msg.item)
    return {"item": item, "item_id": item.item_id}


def _request_opened_fields(msg: resources_pb2.RequestOpened) -> dict[str, Any]:
    request = pending_request_from_proto(msg.request)
    return {"request": request, "request_id": request.request_id}


# The fields of `Event` each `EventBody.kind` sets, keyed by the oneof field's name (which is
# also the `EventKind` value); a kind missing here arrives as EventKind.UNKNOWN.
_BODY_FIELDS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "input_received": lambda m: {"input": m.input},
    "turn_started": lambda m: {
        "worker_id": m.worker_id,
        "runtime_thread_id": m.runtime_thread_id,
    },
    "output": lambda m: {"text": m.text, "stream": _STREAM_NAMES.get(m.stream, "")},
    "turn_completed": lambda m: {"exit_code": m.exit_code},
    "turn_failed": lambda m: {"error_message": m.error_message, "worker_lost": m.worker_lost},
    "turn_interrupted": lambda m: {"reason": m.reason},
    "turn_waiting": lambda m: {"reason": m.reason},
    "session_reverted": lambda m: {"reverted_turn_ids": tuple(m.reverted_turn_ids)},
    "workspace_restored": lambda m: {
        "worker_id": m.worker_id,
        "workspace_restored": WorkspaceRestored(
            m.file_count, m.total_bytes, m.files_written, m.bytes_downloaded, m.files_removed, raw=m
        ),
    },
    "runtime": lambda m: {"runtime_event_name": m.name, "runtime_json": m.json},
    "item_started": _item_fields,
    "item_completed": _item_fields,
    "item_delta": lambda m: {
        "item_id": m.item_id,
        "delta_kind": _enum(DeltaKind, m.kind),
        "text": m.delta,
    },
    "token_usage": lambda m: {"token_usage": token_usage_from_proto(m)},
    "agent_error": lambda m: {
        "error_message": m.message,
        "will_retry": m.will_retry,
        "error_code": m.code,
    },
    "request_opened": _request_opened_fields,
    "request_resolved": lambda m: {
        "request_id": m.request_id,
        "request_state": _enum(RequestState, m.state),
        "response_json": m.response_json,
        "reason": m.expire_reason,
    },
    "history_item": lambda m: {"history_item": history_item_from_proto(m)},
}


def _event_body_fields(body: resources_pb2.EventBody) -> tuple[EventKind, dict[str, Any]]:
    name = body.WhichOneof("kind")
    lift = _BODY_FIELDS.get(name or "")
    if name is None or lift is None:
        return EventKind.UNKNOWN, {}
    return EventKind(name), lift(getattr(body, name))


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
        owner=msg.owner,
        runtime_portability={
            name: _PORTABILITY.get(value, "history") for name, value in sorted(msg.runtime_portability.items())
        },
        raw=msg,
    )


_PORTABILITY = {
    resources_pb2.RUNTIME_PORTABILITY_HISTORY: "history",
    resources_pb2.RUNTIME_PORTABILITY_STATE: "state",
    resources_pb2.RUNTIME_PORTABILITY_NONE: "none",
}


def worker_token_from_proto(msg: admin_service_pb2.WorkerToken) -> WorkerToken:
    return WorkerToken(
        token_id=msg.token_id,
        worker_id=msg.worker_id,
        name=msg.name,
        owner=msg.owner,
        create_time=timestamp_from_proto(msg.create_time),
        revoke_time=timestamp_from_proto(msg.revoke_time) if msg.HasField("revoke_time") else None,
        raw=msg,
    )
