"""Conversions between the runtime layer's dataclasses and the tether.v1 protobuf messages.

Kept in one place so neither the runtimes nor the protocol loops know the other's types.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether.v1 import resources_pb2, worker_service_pb2

from execution_worker._runtime import (
    HistoryItem,
    HistoryRole,
    Output,
    OutputStream,
    RuntimeEvent,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)

_ROLE_TO_PROTO = {
    HistoryRole.INPUT: resources_pb2.HISTORY_ITEM_ROLE_INPUT,
    HistoryRole.OUTPUT: resources_pb2.HISTORY_ITEM_ROLE_OUTPUT,
    HistoryRole.TOOL_CALL: resources_pb2.HISTORY_ITEM_ROLE_TOOL_CALL,
    HistoryRole.TOOL_OUTPUT: resources_pb2.HISTORY_ITEM_ROLE_TOOL_OUTPUT,
}
_ROLE_FROM_PROTO = {v: k for k, v in _ROLE_TO_PROTO.items()}
_STREAM_TO_PROTO = {
    OutputStream.STDOUT: resources_pb2.OUTPUT_STREAM_STDOUT,
    OutputStream.STDERR: resources_pb2.OUTPUT_STREAM_STDERR,
}


def history_to_proto(item: HistoryItem) -> resources_pb2.HistoryItem:
    return resources_pb2.HistoryItem(
        role=_ROLE_TO_PROTO[item.role], text=item.text, turn_id=item.turn_id, raw_json=item.raw_json
    )


def history_from_proto(item: resources_pb2.HistoryItem) -> HistoryItem:
    role = _ROLE_FROM_PROTO.get(item.role)
    if role is None:
        raise ValueError(f"history item with unknown role {item.role}")
    return HistoryItem(role, item.text, item.turn_id, item.raw_json)


def event_body(event: RuntimeEvent) -> resources_pb2.EventBody:
    """The EventBody for one runtime event."""
    if isinstance(event, Output):
        return resources_pb2.EventBody(
            output=resources_pb2.OutputChunk(stream=_STREAM_TO_PROTO[event.stream], text=event.text)
        )
    if isinstance(event, TurnCompleted):
        return resources_pb2.EventBody(turn_completed=resources_pb2.TurnCompleted(exit_code=event.exit_code))
    if isinstance(event, TurnFailed):
        return resources_pb2.EventBody(turn_failed=resources_pb2.TurnFailed(error_message=event.error_message))
    if isinstance(event, TurnInterrupted):
        return resources_pb2.EventBody(turn_interrupted=resources_pb2.TurnInterrupted(reason=event.reason))
    raise TypeError(f"not a runtime event: {event!r}")


def turn_started_body(worker_id: str, runtime_thread_id: str = "") -> resources_pb2.EventBody:
    return resources_pb2.EventBody(
        turn_started=resources_pb2.TurnStarted(worker_id=worker_id, runtime_thread_id=runtime_thread_id)
    )


def history_from_resume(
    chunks: Iterable[worker_service_pb2.ResumeResponse], *, skip_turn_id: str
) -> list[HistoryItem]:
    """Model-visible history from Resume chunks: the snapshot's items, then the events after it.

    Events become history the way the shell runtime records it live: a turn's input_received
    gives an INPUT item, and all its output chunks joined give one OUTPUT item right after it
    (none when the turn printed nothing). The turn about to run (`skip_turn_id`) is left out:
    its input_received is already stored, but the runtime adds it itself when it runs the turn.
    An empty `skip_turn_id` (a restore: no turn is about to run) skips nothing.
    """
    history: list[HistoryItem] = []
    inputs: dict[str, str] = {}
    outputs: dict[str, list[str]] = {}
    order: list[str] = []  # turns in the order their first event appears
    for chunk in chunks:
        history.extend(history_from_proto(item) for item in chunk.history)
        for event in chunk.events:
            turn_id = event.turn_id
            if skip_turn_id and turn_id == skip_turn_id:
                continue
            kind = event.body.WhichOneof("kind")
            if kind == "input_received":
                if turn_id not in inputs and turn_id not in outputs:
                    order.append(turn_id)
                inputs[turn_id] = event.body.input_received.input
            elif kind == "output":
                if turn_id not in inputs and turn_id not in outputs:
                    order.append(turn_id)
                outputs.setdefault(turn_id, []).append(event.body.output.text)
    for turn_id in order:
        if turn_id in inputs:
            history.append(HistoryItem(HistoryRole.INPUT, inputs[turn_id], turn_id))
        text = "".join(outputs.get(turn_id, ()))
        if text:
            history.append(HistoryItem(HistoryRole.OUTPUT, text, turn_id))
    return history


def resume_watermark(chunks: Iterable[worker_service_pb2.ResumeResponse]) -> int:
    """The session seq the rehydrated history covers: the last event sent, else the snapshot's."""
    watermark = 0
    for chunk in chunks:
        watermark = max(watermark, chunk.snapshot_seq, *(event.seq for event in chunk.events))
    return watermark
