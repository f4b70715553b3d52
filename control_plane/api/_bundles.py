"""The session bundle's encoding (docs/bundles.md): JSON Lines of the contract's messages in
the protobuf JSON mapping, versioned, written by ExportSession and read by ImportSession.

`encode` turns a `SessionBundle` of stored records, and the pieces of the workspace blobs its
checkpoints name, into chunks of the bundle. `BundleReader` takes the chunks of an import as
they arrive, checks each line as soon as it is whole (so a bad bundle is refused at its first
bad line, naming it), keeps the byte limit, hands the pieces of `blob` lines on as they come
(they are stored, not held), and gives back the records once the `end` line has been checked
against what came before it. The workspace lines' own encoding is in `_bundle_workspace.py`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.message import Message

from tether.v1 import resources_pb2 as pb

from ..domain import errors
from ..domain.hub import SessionBundle
from ..domain.model import (
    Checkpoint,
    Event,
    PendingRequest,
    RequestKind,
    RequestState,
    Session,
    Snapshot,
    Turn,
    TurnState,
)
from . import _bundle_workspace as ws
from . import _validate as v
from ._bundle_workspace import BlobPiece
from ._convert import HistoryCodec, request_pb, snapshot_pb, ts, turn_pb

#: The version `encode` writes; `BundleReader` reads it and every older one (docs/bundles.md).
VERSION = 2
_CHUNK = 64 * 1024
# The order of a bundle's lines: each key's phase; a line may repeat its phase or move on.
_PHASES = {"session": 1, "turn": 2, "event": 3, "request": 4, "snapshot": 5, "checkpoint": 6, "blob": 7, "end": 8}
# Version 1 has no workspace: its end line counts the first four.
_V1_KINDS = ("session", "turn", "event", "request", "snapshot", "end")
_COUNTS = {
    1: ("turns", "events", "requests", "snapshots"),
    2: ("turns", "events", "requests", "snapshots", "checkpoints", "blobs"),
}
_ENDED = {TurnState.COMPLETED, TurnState.FAILED, TurnState.INTERRUPTED}


def _line(key: str, value: Any) -> bytes:
    return json.dumps({key: value}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _producer() -> str:
    try:
        return f"tether {metadata.version('tether')}"
    except metadata.PackageNotFoundError:
        return "tether"


async def encode(
    bundle: SessionBundle, blob_pieces: AsyncIterator[tuple[str, int, int, bytes]]
) -> AsyncIterator[bytes]:
    """The bundle's bytes, in chunks of at most 64 KiB; `blob_pieces` are the (digest, size,
    offset, piece) of the blobs `bundle.checkpoints` name, each blob's pieces in order."""
    s = bundle.session
    header = {
        "tether_bundle": VERSION,
        "exported_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "exported_by": _producer(),
    }
    session = pb.Session(
        session_id=s.session_id,
        runtime=s.runtime,
        worker_selector=s.worker_selector,
        labels=s.labels,
        create_time=ts(s.create_time_us),
        title=s.title,
        forked_from_session_id=s.forked_from_session_id,
        forked_from_turn_id=s.forked_from_turn_id,
        compacted_seq=s.compacted_seq,
    )
    if s.archived:
        session.state = pb.SESSION_STATE_ARCHIVED
    out = bytearray(json.dumps(header, separators=(",", ":")).encode() + b"\n")
    out += _line("session", _as_json(session))
    counts = dict.fromkeys(_COUNTS[VERSION], 0)
    counts |= {"turns": len(bundle.turns), "requests": len(bundle.requests), "checkpoints": len(bundle.checkpoints)}
    for turn in bundle.turns:
        out += _line("turn", _as_json(turn_pb(turn)))
    events = bundle.events
    pages = events if not isinstance(events, list) else _one_page(events)
    async for page in pages:
        for e in page:
            msg = pb.Event(seq=e.seq, turn_id=e.turn_id, create_time=ts(e.create_time_us))
            msg.body.ParseFromString(e.body)
            out += _line("event", _as_json(msg))
            counts["events"] += 1
            if len(out) >= _CHUNK:
                for chunk in _cut(out):
                    yield chunk
    for request in bundle.requests:
        out += _line("request", _as_json(request_pb(request)))
    for snap in bundle.snapshots:
        out += _line("snapshot", _as_json(snapshot_pb(snap)))
        counts["snapshots"] += 1
        if len(out) >= _CHUNK:
            for chunk in _cut(out):
                yield chunk
    for checkpoint in bundle.checkpoints:
        out += _line("checkpoint", ws.checkpoint_json(checkpoint))
    async for digest, size, offset, piece in blob_pieces:
        if offset == 0:
            counts["blobs"] += 1
        out += _line("blob", ws.blob_json(digest, size, offset, piece))
        if len(out) >= _CHUNK:
            for chunk in _cut(out):
                yield chunk
    out += _line("end", counts)
    for chunk in _cut(out):
        yield chunk


def _cut(out: bytearray) -> list[bytes]:
    """`out` in pieces of at most `_CHUNK` bytes (a blob line is larger), and `out` emptied."""
    view = memoryview(out)
    chunks = [bytes(view[i : i + _CHUNK]) for i in range(0, len(out), _CHUNK)]
    view.release()
    out.clear()
    return chunks


async def _one_page(events: list[Event]) -> AsyncIterator[list[Event]]:
    yield events


class BundleReader:
    """Reads an import's chunks as they arrive (`read`, which yields the pieces of its `blob`
    lines); `finish` then gives the records of a whole, valid bundle. Every refusal is
    `InvalidBundle` (or `UnsupportedBundleVersion`, `LimitExceeded`). The byte limit counts the
    lines held until the end, not the blob lines, which are stored as they come."""

    def __init__(self, max_bytes: int, max_mib: int) -> None:
        self._max_bytes = max_bytes
        self._max_mib = max_mib
        self._size = 0
        self._pending = bytearray()
        self.line = 0  # the last line read
        self._version = VERSION
        self._phase = 0
        self._session: Session | None = None
        self._turns: list[Turn] = []
        self._turn_ids: set[str] = set()
        self._keys: set[str] = set()
        self._events: list[Event] = []
        self._requests: list[PendingRequest] = []
        self._request_ids: set[str] = set()
        self._snapshots: list[Snapshot] = []
        self._checkpoints: list[Checkpoint] = []
        self.checkpoint_lines: list[int] = []  # the line of each checkpoint
        self.blob_lines: dict[str, int] = {}  # each blob's first line
        self._blob: BlobPiece | None = None  # the blob whose pieces are coming, and where its next starts
        self._ended = False

    async def read(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[BlobPiece]:
        """Read the bundle's chunks, checking each line; yields the piece of each `blob` line."""
        async for chunk in chunks:
            lines = chunk.split(b"\n")
            if len(lines) > 1:
                self._pending += lines[0]
                lines[0] = bytes(self._pending)
                self._pending.clear()
                for raw in lines[:-1]:
                    piece = self._read_line(raw)
                    if piece is not None:
                        yield piece
            self._pending += lines[-1]
            if len(self._pending) > max(self._max_bytes - self._size, ws.MAX_BLOB_LINE):
                self._over_limit()
        if self._pending:
            raw = bytes(self._pending)
            self._pending.clear()
            piece = self._read_line(raw)
            if piece is not None:
                yield piece

    def _over_limit(self) -> None:
        raise errors.LimitExceeded(
            "max_import_mib",
            self._max_mib,
            f"the bundle passed {self._max_mib} MiB at line {self.line + 1}; raise --max-import-mib "
            "on the control plane, or export less (fork the part you need first)",
        )

    def finish(self) -> SessionBundle:
        if self.line == 0:
            raise errors.InvalidBundle(0, "the bundle is empty")
        if not self._ended:
            raise errors.InvalidBundle(
                self.line, "the bundle ends without its 'end' line: it is truncated; export it again"
            )
        assert self._session is not None
        compacted = self._session.compacted_seq
        if compacted and not any(s.seq >= compacted for s in self._snapshots):
            raise errors.InvalidBundle(
                2, f"the session's events up to seq {compacted} were compacted, but no snapshot covers them"
            )
        return SessionBundle(
            self._session, self._turns, self._requests, self._snapshots, self._events, self._checkpoints
        )

    # ----------------------------------------------------------------- lines

    def _read_line(self, raw: bytes) -> BlobPiece | None:
        self.line += 1
        n = self.line
        if self._ended:
            if raw.strip():
                raise errors.InvalidBundle(n, "there is data after the 'end' line")
            return None
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.InvalidBundle(n, f"not JSON ({exc})") from None
        if n == 1:
            self._header(value)
            self._held(raw)
            return None
        if not isinstance(value, dict) or len(value) != 1:
            raise errors.InvalidBundle(n, "a line must be a JSON object with exactly one key")
        ((key, body),) = value.items()
        phase = _PHASES.get(key)
        kinds = _V1_KINDS if self._version == 1 else _PHASES
        if phase is None or key not in kinds:
            raise errors.InvalidBundle(
                n, f"unknown line kind {key!r}; a version-{self._version} bundle has {', '.join(kinds)}"
            )
        if phase < self._phase or (phase == 1 and self._phase == 1):
            raise errors.InvalidBundle(n, f"a {key!r} line cannot come after a {self._kind()!r} line")
        if phase > 1 and self._phase == 0:
            raise errors.InvalidBundle(n, "the 'session' line must come right after the header")
        if self._blob is not None and key != "blob":
            raise errors.InvalidBundle(n, ws.unfinished(self._blob))
        self._phase = phase
        if key == "blob":
            return self._on_blob(n, body)
        self._held(raw)
        getattr(self, f"_on_{key}")(n, body)
        return None

    def _held(self, raw: bytes) -> None:
        self._size += len(raw) + 1
        if self._size > self._max_bytes:
            self._over_limit()

    def _kind(self) -> str:
        return next(k for k, p in _PHASES.items() if p == self._phase)

    def _header(self, value: Any) -> None:
        if not isinstance(value, dict) or "tether_bundle" not in value:
            raise errors.InvalidBundle(1, "not a Tether session bundle (no 'tether_bundle' header)")
        version = value["tether_bundle"]
        if not isinstance(version, int) or isinstance(version, bool) or version not in _COUNTS:
            raise errors.UnsupportedBundleVersion(version, VERSION)
        self._version = version

    def _parse(self, n: int, body: Any, message: Message, what: str) -> Any:
        if not isinstance(body, dict):
            raise errors.InvalidBundle(n, f"the {what} must be a JSON object")
        try:
            json_format.ParseDict(body, message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise errors.InvalidBundle(n, f"not a valid {what}: {exc}") from None
        return message

    def _check(self, n: int, field: str, value: str, *, word: bool = False, max_len: int = v.MAX_ID) -> str:
        try:
            return v.word(field, value, max_len=max_len) if word else v.required(field, value, max_len=max_len)
        except errors.InvalidArgument as exc:
            raise errors.InvalidBundle(n, exc.violations[0].field + " " + exc.violations[0].description) from None

    def _on_session(self, n: int, body: Any) -> None:
        msg = cast(pb.Session, self._parse(n, body, pb.Session(), "session"))
        try:
            labels = v.labels("session.labels", msg.labels)
            selector = v.labels("session.worker_selector", msg.worker_selector)
            title = v.title("session.title", msg.title)
        except errors.InvalidArgument as exc:
            raise errors.InvalidBundle(n, exc.violations[0].field + " " + exc.violations[0].description) from None
        created = _us(msg.create_time)
        self._session = Session(
            session_id=self._check(n, "session.session_id", msg.session_id, word=True),
            runtime=self._check(n, "session.runtime", msg.runtime, word=True),
            worker_selector=selector,
            labels=labels,
            create_time_us=created,
            update_time_us=created,
            archived=msg.state == pb.SESSION_STATE_ARCHIVED,
            title=title,
            forked_from_session_id=msg.forked_from_session_id[: v.MAX_ID],
            forked_from_turn_id=msg.forked_from_turn_id[: v.MAX_ID],
            compacted_seq=msg.compacted_seq,
        )

    def _on_turn(self, n: int, body: Any) -> None:
        msg = cast(pb.Turn, self._parse(n, body, pb.Turn(), "turn"))
        turn_id = self._check(n, "turn.turn_id", msg.turn_id, word=True)
        if turn_id in self._turn_ids:
            raise errors.InvalidBundle(n, f"turn {turn_id!r} appears twice")
        try:
            state = TurnState(msg.state)
        except ValueError:
            raise errors.InvalidBundle(n, f"turn {turn_id!r} has no valid state") from None
        if state not in _ENDED:
            raise errors.InvalidBundle(
                n, f"turn {turn_id!r} is {state.name.lower()}; a bundle holds only turns that ended"
            )
        key = msg.idempotency_key
        if key and key in self._keys:
            raise errors.InvalidBundle(n, f"idempotency key {key!r} is used by two turns")
        self._keys.add(key)
        self._turn_ids.add(turn_id)
        self._turns.append(
            Turn(
                turn_id=turn_id,
                session_id="",
                ordinal=len(self._turns) + 1,
                input=msg.input,
                state=state,
                create_time_us=_us(msg.create_time),
                idempotency_key=key[:128],
                worker_id=msg.worker_id[: v.MAX_ID],
                exit_code=msg.exit_code,
                error_message=msg.error_message,
                end_time_us=_us(msg.end_time),
                reverted=msg.reverted,
                start_time_us=_us(msg.start_time),
                first_seq=msg.first_seq,
                last_seq=msg.last_seq,
                usage=pb.EventBody(token_usage=msg.usage).SerializeToString() if msg.HasField("usage") else b"",
                final_message=msg.final_message,
            )
        )

    def _on_event(self, n: int, body: Any) -> None:
        msg = cast(pb.Event, self._parse(n, body, pb.Event(), "event"))
        assert self._session is not None
        expected = (self._events[-1].seq if self._events else self._session.compacted_seq) + 1
        if msg.seq != expected:
            raise errors.InvalidBundle(
                n,
                f"event seq {msg.seq} where {expected} comes next (seqs run on from the session's compacted_seq + 1, no gap)",
            )
        if msg.turn_id not in self._turn_ids:
            raise errors.InvalidBundle(n, f"event {msg.seq} names turn {msg.turn_id!r}, which the bundle does not hold")
        kind = msg.body.WhichOneof("kind")
        if kind is None:
            raise errors.InvalidBundle(n, f"event {msg.seq} has no body (or one this control plane does not know)")
        self._events.append(Event("", msg.seq, msg.turn_id, kind, msg.body.SerializeToString(), _us(msg.create_time)))

    def _on_request(self, n: int, body: Any) -> None:
        msg = cast(pb.PendingRequest, self._parse(n, body, pb.PendingRequest(), "request"))
        request_id = self._check(n, "request.request_id", msg.request_id, word=True)
        if request_id in self._request_ids:
            raise errors.InvalidBundle(n, f"request {request_id!r} appears twice")
        if msg.turn_id not in self._turn_ids:
            raise errors.InvalidBundle(
                n, f"request {request_id!r} names turn {msg.turn_id!r}, which the bundle does not hold"
            )
        try:
            state = RequestState(msg.state)
        except ValueError:
            raise errors.InvalidBundle(n, f"request {request_id!r} has no valid state") from None
        if state == RequestState.PENDING:
            raise errors.InvalidBundle(n, f"request {request_id!r} is pending, but its turn ended")
        try:
            kind = RequestKind(msg.kind)
        except ValueError:
            kind = RequestKind.OTHER
        self._request_ids.add(request_id)
        self._requests.append(
            PendingRequest(
                request_id=request_id,
                session_id="",
                turn_id=msg.turn_id,
                kind=kind,
                method=msg.method,
                params_json=msg.params_json,
                summary=msg.summary,
                item_id=msg.item_id,
                available_decisions=list(msg.available_decisions),
                state=state,
                create_time_us=_us(msg.create_time),
                response_json=msg.response_json,
                expire_reason=msg.expire_reason,
                resolve_time_us=_us(msg.resolve_time),
            )
        )

    def _on_snapshot(self, n: int, body: Any) -> None:
        msg = cast(pb.Snapshot, self._parse(n, body, pb.Snapshot(), "snapshot"))
        assert self._session is not None
        last = self._events[-1].seq if self._events else self._session.compacted_seq
        if msg.seq > last:
            raise errors.InvalidBundle(n, f"snapshot at seq {msg.seq} is past the bundle's last event ({last})")
        self._snapshots.append(
            Snapshot(
                snapshot_id="",
                session_id="",
                seq=msg.seq,
                worker_id=msg.worker_id[: v.MAX_ID],
                lease_epoch=0,
                runtime=self._check(n, "snapshot.runtime", msg.runtime, word=True),
                runtime_metadata_json=msg.runtime_metadata_json or "{}",
                history=HistoryCodec.encode(list(msg.history)),
                history_count=len(msg.history),
                create_time_us=_us(msg.create_time),
            )
        )

    def _on_checkpoint(self, n: int, body: Any) -> None:
        assert self._session is not None
        last = self._events[-1].seq if self._events else self._session.compacted_seq
        after = self._checkpoints[-1].seq if self._checkpoints else -1
        self._checkpoints.append(ws.parse_checkpoint(n, body, self._turn_ids, after, last))
        self.checkpoint_lines.append(n)

    def _on_blob(self, n: int, body: Any) -> BlobPiece:
        piece = ws.parse_blob(n, body, self._blob, self.blob_lines)
        if piece.offset == 0:
            self.blob_lines[piece.digest] = n
        end = piece.offset + len(piece.data)
        self._blob = piece._replace(offset=end, data=b"") if end < piece.size else None
        return piece

    def _on_end(self, n: int, body: Any) -> None:
        have = {
            "turns": len(self._turns),
            "events": len(self._events),
            "requests": len(self._requests),
            "snapshots": len(self._snapshots),
            "checkpoints": len(self._checkpoints),
            "blobs": len(self.blob_lines),
        }
        have = {k: have[k] for k in _COUNTS[self._version]}
        if body != have:
            raise errors.InvalidBundle(
                n, f"the 'end' line counts {body!r} but the bundle holds {have}: it is truncated or was edited"
            )
        self._ended = True


def _us(stamp: Any) -> int:
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000
