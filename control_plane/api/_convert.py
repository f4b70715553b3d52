"""Proto ↔ domain conversion, in small functions, plus the event wire cache.

An event is encoded once, when it is first sent, and the bytes are shared by every
subscriber: protobuf lets concatenated encodings merge, so the stored EventBody bytes are
appended to the header fields without ever being decoded. Domain enums carry the contract's
numbers, so converting one is a cast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from google.protobuf import duration_pb2, timestamp_pb2

from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb

from ..domain import errors
from ..domain import messages as m
from ..domain.model import Event, PendingRequest, RequestKind, RequestState, Session, Snapshot, Turn, now_us

_BODY_TAG = b"\x2a"  # Event.body: field 5, length-delimited
_EVENTS_TAG = b"\x0a"  # StreamSessionEventsResponse.events / ResumeResponse...: field 1


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ts(us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))


def _timestamp_bytes(us: int) -> bytes:
    seconds, micros = divmod(us, 1_000_000)
    out = b"\x08" + varint(seconds) if seconds else b""
    if micros:
        out += b"\x10" + varint(micros * 1000)
    return out


def _string_field(tag: bytes, value: str) -> bytes:
    raw = value.encode()
    return tag + varint(len(raw)) + raw if raw else b""


def event_wire(e: Event, _prefix: dict | None = None) -> bytes:
    """The Event's encoding: session_id(1) seq(2) turn_id(3) create_time(4) body(5)
    lease_epoch(6).

    Events of one batch share their session, turn and time, so `_prefix` caches those bytes.
    """
    wire = e.wire
    if wire is None:
        key = (e.turn_id, e.create_time_us)
        cached = _prefix.get(key) if _prefix is not None else None
        if cached is None:
            when = _timestamp_bytes(e.create_time_us)
            cached = (
                _string_field(b"\x0a", e.session_id),
                _string_field(b"\x1a", e.turn_id) + b"\x22" + varint(len(when)) + when,
            )
            if _prefix is not None:
                _prefix[key] = cached
        head, tail = cached
        seq = b"\x10" + varint(e.seq) if e.seq else b""
        epoch = b"\x30" + varint(e.lease_epoch) if e.lease_epoch else b""
        wire = e.wire = head + seq + tail + _BODY_TAG + varint(len(e.body)) + e.body + epoch
    return wire


RESUME_EVENTS_TAG = b"\x22"  # ResumeResponse.events: field 4, length-delimited


def events_message(events: list[Event], tag: bytes = _EVENTS_TAG) -> bytes:
    """Encode a message whose only field is repeated Event `tag` (StreamSessionEventsResponse by
    default) directly from cached event encodings."""
    prefix: dict = {}
    parts = []
    for e in events:
        w = e.wire or event_wire(e, prefix)
        parts.append(tag)
        parts.append(varint(len(w)))
        parts.append(w)
    return b"".join(parts)


def event_pb(e: Event) -> pb.Event:
    return pb.Event.FromString(event_wire(e))


def session_pb(v: m.SessionView) -> pb.Session:
    s: Session = v.session
    return pb.Session(
        session_id=s.session_id,
        runtime=s.runtime,
        worker_selector=s.worker_selector,
        labels=s.labels,
        state=cast(pb.SessionState, int(v.state)),
        create_time=ts(s.create_time_us),
        update_time=ts(s.update_time_us),
        last_seq=v.last_seq,
        active_turn_id=v.active_turn_id,
        worker_id=v.worker_id,
        lease_epoch=v.lease_epoch,
        runtime_thread_id=s.runtime_thread_id,
        turn_count=s.turn_count,
        owner=s.owner,
        waiting_reason=v.waiting_reason,
        forked_from_session_id=s.forked_from_session_id,
        forked_from_turn_id=s.forked_from_turn_id,
        title=s.title,
        last_activity_time=ts(v.last_activity_us or s.create_time_us),
        delete_time=ts(s.delete_time_us) if s.delete_time_us else None,
        compacted_seq=s.compacted_seq,
    )


def turn_pb(t: Turn) -> pb.Turn:
    msg = pb.Turn(
        turn_id=t.turn_id,
        session_id=t.session_id,
        input=t.input,
        state=cast(pb.TurnState, int(t.state)),
        idempotency_key=t.idempotency_key,
        create_time=ts(t.create_time_us),
        worker_id=t.worker_id,
        lease_epoch=t.lease_epoch,
        exit_code=t.exit_code,
        error_message=t.error_message,
        waiting_reason=t.waiting_reason,
        reverted=t.reverted,
        first_seq=t.first_seq,
        last_seq=t.last_seq,
        final_message=t.final_message,
        output_schema=t.output_schema,
        result_json=t.result_json,
    )
    if t.start_time_us:
        msg.start_time.CopyFrom(ts(t.start_time_us))
    if t.usage:
        msg.usage.CopyFrom(pb.EventBody.FromString(t.usage).token_usage)
    if t.end_time_us:
        msg.end_time.CopyFrom(ts(t.end_time_us))
    if t.interrupt_time_us:
        msg.interrupt_request_time.CopyFrom(ts(t.interrupt_time_us))
    return msg


class HistoryCodec:
    """Snapshot history is stored as a Snapshot message holding only its history items."""

    @staticmethod
    def encode(items: list[pb.HistoryItem]) -> bytes:
        return pb.Snapshot(history=items).SerializeToString()

    @staticmethod
    def decode(data: bytes) -> list[pb.HistoryItem]:
        return list(pb.Snapshot.FromString(data).history)


def snapshot_pb(s: Snapshot, *, with_history: bool = True) -> pb.Snapshot:
    msg = pb.Snapshot.FromString(s.history) if with_history else pb.Snapshot()
    msg.session_id = s.session_id
    msg.snapshot_id = s.snapshot_id
    msg.seq = s.seq
    msg.runtime = s.runtime
    msg.runtime_metadata_json = s.runtime_metadata_json
    msg.create_time.CopyFrom(ts(s.create_time_us))
    msg.worker_id = s.worker_id
    return msg


class ProtoBodyCodec:
    """Encodes the event bodies the control plane writes itself."""

    def input_received(self, text: str) -> bytes:
        return pb.EventBody(input_received=pb.InputReceived(input=text)).SerializeToString()

    def turn_failed(self, message: str, worker_lost: bool = False) -> bytes:
        failed = pb.TurnFailed(error_message=message, worker_lost=worker_lost)
        return pb.EventBody(turn_failed=failed).SerializeToString()

    def turn_interrupted(self, reason: str) -> bytes:
        return pb.EventBody(turn_interrupted=pb.TurnInterrupted(reason=reason)).SerializeToString()

    def turn_waiting(self, reason: str) -> bytes:
        return pb.EventBody(turn_waiting=pb.TurnWaiting(reason=reason)).SerializeToString()

    def request_resolved(self, request: PendingRequest) -> bytes:
        resolved = pb.RequestResolved(
            request_id=request.request_id,
            state=cast(pb.RequestState, int(request.state)),
            response_json=request.response_json,
            expire_reason=request.expire_reason,
        )
        return pb.EventBody(request_resolved=resolved).SerializeToString()

    def session_reverted(self, turn_id: str, reverted_turn_ids: list[str]) -> bytes:
        reverted = pb.SessionReverted(turn_id=turn_id, reverted_turn_ids=reverted_turn_ids)
        return pb.EventBody(session_reverted=reverted).SerializeToString()

    def rebind_history(self, history: bytes, turn_ids: dict[str, str]) -> bytes:
        snapshot = pb.Snapshot.FromString(history)
        for item in snapshot.history:
            item.turn_id = turn_ids.get(item.turn_id, item.turn_id)
        return snapshot.SerializeToString()

    def history_of_turns(self, history: bytes, turn_ids: dict[str, str]) -> tuple[bytes, int]:
        kept = [
            item for item in pb.Snapshot.FromString(history).history if not item.turn_id or item.turn_id in turn_ids
        ]
        for item in kept:
            if item.turn_id:
                item.turn_id = turn_ids[item.turn_id]
        return pb.Snapshot(history=kept).SerializeToString(), len(kept)

    def agent_message_text(self, body: bytes) -> str | None:
        item = pb.EventBody.FromString(body).item_completed.item
        return item.text if item.kind == pb.ITEM_KIND_AGENT_MESSAGE else None

    def rebind(
        self,
        kind: str,
        body: bytes,
        session_id: str,
        turn_id: str,
        request_ids: dict[str, str],
        turn_ids: dict[str, str] | None = None,
    ) -> bytes:
        # Only these kinds name a session, a turn or a request inside the body; the others are
        # copied byte for byte.
        if kind == "history_item":
            msg = pb.EventBody.FromString(body)
            msg.history_item.turn_id = turn_id
        elif kind == "request_opened":
            msg = pb.EventBody.FromString(body)
            opened = msg.request_opened.request
            opened.request_id = request_ids.get(opened.request_id, opened.request_id)
            opened.session_id = session_id
            opened.turn_id = turn_id
        elif kind == "request_resolved":
            msg = pb.EventBody.FromString(body)
            resolved = msg.request_resolved
            resolved.request_id = request_ids.get(resolved.request_id, resolved.request_id)
        elif kind == "session_reverted" and turn_ids:
            msg = pb.EventBody.FromString(body)
            reverted = msg.session_reverted
            reverted.turn_id = turn_ids.get(reverted.turn_id, reverted.turn_id)
            reverted.reverted_turn_ids[:] = [turn_ids.get(t, t) for t in reverted.reverted_turn_ids]
        else:
            return body
        return msg.SerializeToString()


def request_pb(r: PendingRequest) -> pb.PendingRequest:
    msg = pb.PendingRequest(
        request_id=r.request_id,
        session_id=r.session_id,
        turn_id=r.turn_id,
        kind=cast(pb.RequestKind, int(r.kind)),
        method=r.method,
        params_json=r.params_json,
        summary=r.summary,
        item_id=r.item_id,
        state=cast(pb.RequestState, int(r.state)),
        response_json=r.response_json,
        expire_reason=r.expire_reason,
        create_time=ts(r.create_time_us),
        available_decisions=r.available_decisions,
    )
    if r.resolve_time_us:
        msg.resolve_time.CopyFrom(ts(r.resolve_time_us))
    return msg


def _opened_request(body: pb.EventBody, turn_id: str) -> tuple[PendingRequest, bytes]:
    """The request a worker's request_opened event carries, and the body as stored: the control
    plane fills in what it owns (session, turn, state, time) so readers of the log see the
    request as stored."""
    opened = body.request_opened.request
    try:
        kind = RequestKind(opened.kind)
    except ValueError:
        kind = RequestKind.OTHER
    request = PendingRequest(
        request_id=opened.request_id,
        session_id="",
        turn_id=turn_id,
        kind=kind,
        method=opened.method,
        params_json=opened.params_json,
        summary=opened.summary,
        item_id=opened.item_id,
        available_decisions=list(opened.available_decisions),
        state=RequestState.PENDING,
        create_time_us=now_us(),
    )
    opened.turn_id = turn_id
    opened.state = cast(pb.RequestState, int(RequestState.PENDING))
    opened.ClearField("response_json")
    opened.ClearField("expire_reason")
    opened.ClearField("resolve_time")
    opened.create_time.CopyFrom(ts(request.create_time_us))
    return request, body.SerializeToString()


def incoming_event(ev: wpb.WorkerEvent) -> m.IncomingEvent:
    body = ev.body
    kind = body.WhichOneof("kind") or ""
    exit_code, message, thread = 0, "", ""
    if kind == "turn_completed":
        exit_code = body.turn_completed.exit_code
    elif kind == "turn_failed":
        message = body.turn_failed.error_message
    elif kind == "turn_interrupted":
        message = body.turn_interrupted.reason
    elif kind == "turn_started":
        thread = body.turn_started.runtime_thread_id
    elif kind == "request_opened":
        request, raw = _opened_request(body, ev.turn_id)
        return m.IncomingEvent(ev.worker_seq, ev.turn_id, kind, raw, request=request)
    return m.IncomingEvent(ev.worker_seq, ev.turn_id, kind, body.SerializeToString(), exit_code, message, thread)


def lease_refs(refs) -> list[tuple[str, int]]:
    return [(r.session_id, r.lease_epoch) for r in refs]


def _granted_pb(msg: m.GrantMsg) -> wpb.OfferGranted:
    return wpb.OfferGranted(
        session_id=msg.session_id,
        turn_id=msg.turn_id,
        lease_epoch=msg.lease_epoch,
        lease_expire_time=ts(msg.lease_expire_us),
    )


def worker_msg_pb(msg: m.WorkerMsg) -> wpb.LeaseResponse:
    if isinstance(msg, m.OfferMsg):
        granted = msg.granted
        return wpb.LeaseResponse(
            offer=wpb.Offer(
                session_id=msg.session_id,
                turn_id=msg.turn_id,
                input=msg.input,
                runtime=msg.runtime,
                lease_epoch=msg.lease_epoch,
                resume_required=msg.resume_required,
                last_seq=msg.last_seq,
                accept_deadline=ts(msg.accept_deadline_us),
                restore_only=msg.restore_only,
                output_schema=msg.output_schema,
                trace_context=dict(msg.trace_context),
                granted=_granted_pb(granted) if granted is not None else None,
            )
        )
    if isinstance(msg, m.GrantMsg):
        return wpb.LeaseResponse(granted=_granted_pb(msg))
    if isinstance(msg, m.InterruptMsg):
        return wpb.LeaseResponse(
            interrupt=wpb.InterruptRequested(session_id=msg.session_id, turn_id=msg.turn_id, reason=msg.reason)
        )
    if isinstance(msg, m.RevokeMsg):
        return wpb.LeaseResponse(
            revoked=wpb.LeaseRevoked(session_id=msg.session_id, lease_epoch=msg.lease_epoch, reason=msg.reason)
        )
    if isinstance(msg, m.SnapshotRequestMsg):
        return wpb.LeaseResponse(
            snapshot=wpb.SnapshotRequested(
                session_id=msg.session_id, lease_epoch=msg.lease_epoch, request_id=msg.request_id
            )
        )
    if isinstance(msg, m.RenewedMsg):
        return wpb.LeaseResponse(
            renewed=wpb.LeasesRenewed(
                lease_expire_time=ts(msg.lease_expire_us),
                lost_leases=[wpb.LeaseRef(session_id=s, lease_epoch=e) for s, e in msg.lost],
                resync=msg.resync,
            )
        )
    if isinstance(msg, m.DrainMsg):
        drain = wpb.DrainRequested()
        if msg.deadline_us:
            drain.deadline.CopyFrom(ts(msg.deadline_us))
        return wpb.LeaseResponse(drain=drain)
    if isinstance(msg, m.AnswerMsg):
        return wpb.LeaseResponse(
            answered=wpb.RequestAnswered(
                session_id=msg.session_id,
                turn_id=msg.turn_id,
                request_id=msg.request_id,
                response_json=msg.response_json,
            )
        )
    raise TypeError(f"no wire form for {type(msg).__name__}")


_PORTABILITY_NAMES = {
    pb.RUNTIME_PORTABILITY_UNSPECIFIED: "history",
    pb.RUNTIME_PORTABILITY_HISTORY: "history",
    pb.RUNTIME_PORTABILITY_STATE: "state",
    pb.RUNTIME_PORTABILITY_NONE: "none",
}
_PORTABILITY_VALUES = {
    "history": pb.RUNTIME_PORTABILITY_HISTORY,
    "state": pb.RUNTIME_PORTABILITY_STATE,
    "none": pb.RUNTIME_PORTABILITY_NONE,
}


def runtime_portability(runtimes: list[str], declared: Mapping[str, int]) -> dict[str, str]:
    """RegisterRequest.runtime_portability as the domain keeps it: every runtime of the worker
    named, "history" where the worker declared nothing (a worker older than the field)."""
    out = dict.fromkeys(runtimes, "history")
    for name, value in sorted(declared.items()):
        if name not in out:
            raise errors.InvalidArgument(
                f"runtime_portability[{name!r}]", f"{name!r} is not one of the worker's runtimes {runtimes}"
            )
        if value not in _PORTABILITY_NAMES:
            raise errors.InvalidArgument(
                f"runtime_portability[{name!r}]", f"{value} is not a RuntimePortability value (HISTORY, STATE or NONE)"
            )
        out[name] = _PORTABILITY_NAMES[cast(pb.RuntimePortability, value)]
    return out


def portability_pb(portability: dict[str, str]) -> dict[str, pb.RuntimePortability]:
    """The domain's runtime portability map as WorkerStatus.runtime_portability."""
    return {name: _PORTABILITY_VALUES[value] for name, value in portability.items()}
