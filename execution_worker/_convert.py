"""Conversions between the runtime layer's dataclasses and the tether.v1 protobuf messages.

Kept in one place so neither the runtimes nor the protocol loops know the other's types.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tether.execution_worker._workspace_restore import RestoreStats
from tether.execution_worker.runtime import (
    AgentError,
    DeltaKind,
    HistoryAppended,
    HistoryItem,
    HistoryRole,
    Item,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    Output,
    OutputStream,
    Portability,
    RawEvent,
    RequestKind,
    RequestOpened,
    RuntimeEvent,
    TokenUsage,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)
from tether.v1 import resources_pb2, worker_service_pb2

_PORTABILITY_TO_PROTO = {
    Portability.HISTORY: resources_pb2.RUNTIME_PORTABILITY_HISTORY,
    Portability.STATE: resources_pb2.RUNTIME_PORTABILITY_STATE,
    Portability.NONE: resources_pb2.RUNTIME_PORTABILITY_NONE,
}


def portability_pb(portability: Portability) -> resources_pb2.RuntimePortability:
    """A runtime's declared portability as the contract's enum (for RegisterRequest)."""
    return _PORTABILITY_TO_PROTO[portability]


def runtime_state(metadata_json: str) -> dict[str, Any]:
    """A snapshot's runtime metadata as `Runtime.restore_state` takes it: `{}` when there is no
    snapshot. Metadata that is not a JSON object raises ValueError (the restore fails closed)."""
    if not metadata_json:
        return {}
    state = json.loads(metadata_json)
    if not isinstance(state, dict):
        raise ValueError(f"the snapshot's runtime metadata is a JSON {type(state).__name__}, not an object")
    return state


_ROLE_TO_PROTO = {
    HistoryRole.INPUT: resources_pb2.HISTORY_ITEM_ROLE_INPUT,
    HistoryRole.OUTPUT: resources_pb2.HISTORY_ITEM_ROLE_OUTPUT,
    HistoryRole.TOOL_CALL: resources_pb2.HISTORY_ITEM_ROLE_TOOL_CALL,
    HistoryRole.TOOL_OUTPUT: resources_pb2.HISTORY_ITEM_ROLE_TOOL_OUTPUT,
}
_ROLE_FROM_PROTO = {v: k for k, v in _ROLE_TO_PROTO.items()}

#: Put into the rehydrated history right after a turn that died with its worker (`turn_failed`
#: with `worker_lost`, written by the control plane): without it the model sees that turn's
#: input with no answer and may simply do it again. The form is the one Codex itself records
#: for a turn it aborted (a user message in `<turn_aborted>` tags, which Codex treats as context,
#: not as the user's words).
LOST_TURN_MARKER = (
    "<turn_aborted>\n"
    "The previous turn did not finish: the worker running it was lost. Any tools or commands it "
    "started may have partially executed, and what they did is not in this history; verify the "
    "current state before retrying.\n"
    "</turn_aborted>"
)
_STREAM_TO_PROTO = {
    OutputStream.STDOUT: resources_pb2.OUTPUT_STREAM_STDOUT,
    OutputStream.STDERR: resources_pb2.OUTPUT_STREAM_STDERR,
}
_ITEM_KIND_TO_PROTO = {
    ItemKind.OTHER: resources_pb2.ITEM_KIND_UNSPECIFIED,
    ItemKind.USER_MESSAGE: resources_pb2.ITEM_KIND_USER_MESSAGE,
    ItemKind.AGENT_MESSAGE: resources_pb2.ITEM_KIND_AGENT_MESSAGE,
    ItemKind.REASONING: resources_pb2.ITEM_KIND_REASONING,
    ItemKind.COMMAND_EXECUTION: resources_pb2.ITEM_KIND_COMMAND_EXECUTION,
    ItemKind.FILE_CHANGE: resources_pb2.ITEM_KIND_FILE_CHANGE,
    ItemKind.TOOL_CALL: resources_pb2.ITEM_KIND_TOOL_CALL,
}
_DELTA_KIND_TO_PROTO = {
    DeltaKind.AGENT_MESSAGE: resources_pb2.DELTA_KIND_AGENT_MESSAGE,
    DeltaKind.COMMAND_OUTPUT: resources_pb2.DELTA_KIND_COMMAND_OUTPUT,
    DeltaKind.REASONING: resources_pb2.DELTA_KIND_REASONING,
    DeltaKind.FILE_CHANGE: resources_pb2.DELTA_KIND_FILE_CHANGE,
}
_REQUEST_KIND_TO_PROTO = {
    RequestKind.OTHER: resources_pb2.REQUEST_KIND_UNSPECIFIED,
    RequestKind.COMMAND_APPROVAL: resources_pb2.REQUEST_KIND_COMMAND_APPROVAL,
    RequestKind.FILE_CHANGE_APPROVAL: resources_pb2.REQUEST_KIND_FILE_CHANGE_APPROVAL,
    RequestKind.USER_INPUT: resources_pb2.REQUEST_KIND_USER_INPUT,
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


def item_to_proto(item: Item) -> resources_pb2.Item:
    msg = resources_pb2.Item(
        item_id=item.item_id,
        kind=_ITEM_KIND_TO_PROTO[item.kind],
        text=item.text,
        command=item.command,
        cwd=item.cwd,
        status=item.status,
        aggregated_output=item.aggregated_output,
        changes=[resources_pb2.FileChange(path=c.path, kind=c.kind, diff=c.diff) for c in item.changes],
        raw_json=item.raw_json,
    )
    if item.exit_code is not None:
        msg.exit_code = item.exit_code
    return msg


def event_body(event: RuntimeEvent) -> resources_pb2.EventBody:
    """The EventBody for one runtime event."""
    if isinstance(event, ItemDelta):  # the most frequent, first
        return resources_pb2.EventBody(
            item_delta=resources_pb2.ItemDelta(
                item_id=event.item_id, kind=_DELTA_KIND_TO_PROTO[event.kind], delta=event.delta
            )
        )
    if isinstance(event, ItemStarted):
        return resources_pb2.EventBody(item_started=resources_pb2.ItemStarted(item=item_to_proto(event.item)))
    if isinstance(event, ItemCompleted):
        return resources_pb2.EventBody(item_completed=resources_pb2.ItemCompleted(item=item_to_proto(event.item)))
    if isinstance(event, TokenUsage):
        return resources_pb2.EventBody(
            token_usage=resources_pb2.TokenUsage(
                last_input_tokens=event.last_input_tokens,
                last_output_tokens=event.last_output_tokens,
                total_input_tokens=event.total_input_tokens,
                total_cached_input_tokens=event.total_cached_input_tokens,
                total_output_tokens=event.total_output_tokens,
                total_reasoning_output_tokens=event.total_reasoning_output_tokens,
                total_tokens=event.total_tokens,
                model_context_window=event.model_context_window,
            )
        )
    if isinstance(event, AgentError):
        return resources_pb2.EventBody(
            agent_error=resources_pb2.AgentError(message=event.message, will_retry=event.will_retry, code=event.code)
        )
    if isinstance(event, RawEvent):
        return resources_pb2.EventBody(runtime=resources_pb2.RuntimeEvent(name=event.name, json=event.json))
    if isinstance(event, HistoryAppended):
        return resources_pb2.EventBody(history_item=history_to_proto(event.item))
    if isinstance(event, RequestOpened):
        return resources_pb2.EventBody(
            request_opened=resources_pb2.RequestOpened(
                request=resources_pb2.PendingRequest(
                    request_id=event.request_id,
                    kind=_REQUEST_KIND_TO_PROTO[event.kind],
                    method=event.method,
                    params_json=event.params_json,
                    summary=event.summary,
                    item_id=event.item_id,
                    state=resources_pb2.REQUEST_STATE_PENDING,
                    available_decisions=list(event.available_decisions),
                )
            )
        )
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


def workspace_restored_body(worker_id: str, stats: RestoreStats) -> resources_pb2.EventBody:
    return resources_pb2.EventBody(
        workspace_restored=resources_pb2.WorkspaceRestored(
            worker_id=worker_id,
            file_count=stats.file_count,
            total_bytes=stats.total_bytes,
            files_written=stats.files_written,
            bytes_downloaded=stats.bytes_downloaded,
            files_removed=stats.files_removed,
        )
    )


def history_from_resume(chunks: Iterable[worker_service_pb2.ResumeResponse], *, skip_turn_id: str) -> list[HistoryItem]:
    """Model-visible history from Resume chunks: the snapshot's items, then the events after it.

    A turn whose runtime recorded its model-visible history (`history_item` events, as the Codex
    runtime does) contributes exactly those items. Other turns become history the way the shell
    runtime records it live: a turn's input_received gives an INPUT item, and all its output
    chunks joined give one OUTPUT item right after it (none when the turn printed nothing).
    A turn lost with its worker that recorded no history of its own is followed by an INPUT item
    holding `LOST_TURN_MARKER`. A `session_reverted` event drops the turns it lists, wherever
    their items are (the snapshot or the log before it): they left the model-visible history
    (RevertSession). The turn about to run (`skip_turn_id`) is left out: its input_received is
    already stored, but the runtime adds it itself when it runs the turn.
    An empty `skip_turn_id` (a restore: no turn is about to run) skips nothing.
    """
    history: list[HistoryItem] = []
    inputs: dict[str, str] = {}
    outputs: dict[str, list[str]] = {}
    recorded: dict[str, list[HistoryItem]] = {}
    lost: set[str] = set()  # turns that ended with their worker
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
            elif kind == "history_item":
                if turn_id not in inputs and turn_id not in outputs and turn_id not in recorded:
                    order.append(turn_id)
                recorded.setdefault(turn_id, []).append(history_from_proto(event.body.history_item))
            elif kind == "turn_failed" and event.body.turn_failed.worker_lost:
                lost.add(turn_id)
            elif kind == "session_reverted":
                history, order = _revert(history, order, event.body.session_reverted.reverted_turn_ids)
    for turn_id in order:
        if turn_id in recorded:
            # The runtime recorded the whole turn (its terminal event is what was lost).
            history.extend(recorded[turn_id])
            continue
        if turn_id in inputs:
            history.append(HistoryItem(HistoryRole.INPUT, inputs[turn_id], turn_id))
        text = "".join(outputs.get(turn_id, ()))
        if text:
            history.append(HistoryItem(HistoryRole.OUTPUT, text, turn_id))
        if turn_id in lost:
            history.append(HistoryItem(HistoryRole.INPUT, LOST_TURN_MARKER, turn_id))
    return history


def _revert(
    history: list[HistoryItem], order: list[str], reverted: Iterable[str]
) -> tuple[list[HistoryItem], list[str]]:
    """The history without the turns a session_reverted event took back: their items (from the
    snapshot, or recorded in the log before the event) and their turns in the log."""
    gone = set(reverted)
    return [item for item in history if item.turn_id not in gone], [t for t in order if t not in gone]


def resume_watermark(chunks: Iterable[worker_service_pb2.ResumeResponse]) -> int:
    """The session seq the rehydrated history covers: the last event sent, else the snapshot's."""
    watermark = 0
    for chunk in chunks:
        watermark = max(watermark, chunk.snapshot_seq, *(event.seq for event in chunk.events))
    return watermark
