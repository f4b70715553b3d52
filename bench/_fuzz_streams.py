"""Mid-stream fuzzing: malformed messages on worker streams that are open and past their checks.

A plain fuzz call of a streaming RPC sends its messages all at once, so most of them die at the
stream's header checks. These sequences first act as a well-behaved worker, and only then
misbehave, on streams the control plane has opened and is reading:

- lease: a paired worker opens its Lease stream, waits for `opened`, sends well-formed
  messages (renewals by list and by digest, rejections and releases of nothing it holds), then
  malformed ones: bytes that decode as no LeaseRequest, and arbitrary LeaseRequests; sometimes
  a valid renewal after them.
- events: the application sends a turn to a fresh session; a second paired worker takes its
  offer on its Lease stream and is granted the lease; sometimes it then sends that stream
  messages about the very lease it holds (rejecting or accepting the granted offer again,
  releasing or renewing the lease at its epoch or next to it) or undecodable bytes. It resumes
  (Resume) and opens StreamEvents with turn_started and output (sometimes a request_opened
  with arbitrary fields, which the application then answers with arbitrary JSON through
  RespondToRequest and lists with ListRequests while the turn runs), waits until the control
  plane has acknowledged them, then sends malformed batches: undecodable bytes, arbitrary
  StreamEventsRequests, and plausible ones (the right session, epoch, turn and next
  worker_seq, give or take one, with an arbitrary event body). It then uploads a snapshot whose
  header is valid followed by chunks that are not, ends the turn on a second StreamEvents
  stream, and releases the lease. Half the sequences do the same on StreamWorkerEvents, the
  worker's one stream for all its sessions: their batches go in a SessionEventBatch, the tail's
  undecodable or arbitrary messages are StreamWorkerEventsRequests, and a batch refused in-band
  (SessionEventsRefused) is judged as a call's answer would be.

Every call's answer goes through the same judgement as the plain fuzz (`problem`).
"""

from __future__ import annotations

import itertools
import json
import queue
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from hypothesis import strategies as st

from tether.v1 import admin_service_pb2 as apb
from tether.v1 import admin_service_pb2_grpc as agrpc
from tether.v1 import resources_pb2 as rpb
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

from ._fuzz_requests import Outcome, Requests, outcome_of

STEP_TIMEOUT_S = 10.0  # a step of a sequence this slow is a hang, reported as such
_LEASE = "/tether.v1.WorkerService/Lease"
_EVENTS = "/tether.v1.WorkerService/StreamEvents"
_WORKER_EVENTS = "/tether.v1.WorkerService/StreamWorkerEvents"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_SNAPSHOT = "/tether.v1.WorkerService/Snapshot"
_RESUME = "/tether.v1.WorkerService/Resume"

#: record(method name, credential kind, answer): the runner counts and judges each call.
Record = Callable[[str, str, Outcome], None]


def _raw(b: bytes) -> bytes:
    return b


class _Stream:
    """A bidirectional call this side writes message by message, reading answers in between."""

    def __init__(self, channel: grpc.Channel, path: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self._outgoing: queue.Queue[bytes | None] = queue.Queue()
        stub = channel.stream_stream(path, request_serializer=_raw, response_deserializer=_raw)
        self._call = stub(self._requests(), metadata=metadata, timeout=STEP_TIMEOUT_S)
        self.outcome: Outcome | None = None  # set once the call has ended

    def _requests(self) -> Iterator[bytes]:
        while (message := self._outgoing.get()) is not None:
            yield message

    def send(self, message: bytes) -> None:
        self._outgoing.put(message)

    def read(self) -> bytes | None:
        """The next answer, or None once the call has ended (its outcome is then set)."""
        if self.outcome is not None:
            return None
        try:
            return next(self._call)
        except StopIteration:
            self.outcome = Outcome(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            self.outcome = outcome_of(err)
        self._outgoing.put(None)  # let gRPC's sending thread leave the request iterator
        return None

    def finish(self) -> tuple[list[bytes], Outcome]:
        """Half-close, then read every remaining answer until the call ends."""
        self._outgoing.put(None)
        answers = []
        while (answer := self.read()) is not None:
            answers.append(answer)
        assert self.outcome is not None
        return answers, self.outcome


@dataclass(frozen=True)
class LeasePlan:
    prefix: tuple[bytes, ...]  # well-formed LeaseRequests sent once the stream is open
    tail: tuple[bytes, ...]  # malformed ones after them
    renew_after: bool


@dataclass(frozen=True)
class EventsPlan:
    outputs: int  # output events after turn_started, acknowledged before the tail
    # A PendingRequest (its id replaced by a fresh valid one) opened after the outputs, or
    # None; then each answer is sent through RespondToRequest, and ListRequests with `listed`.
    request: bytes | None
    answers: tuple[str, ...]
    listed: int
    # Each: ("raw", bytes) sent as they are, or ("event", EventBody bytes, worker_seq offset)
    # sent as one event of the running turn at the next worker_seq plus the offset.
    tail: tuple[tuple, ...]
    snapshot_tail: tuple[bytes, ...]  # chunks after a valid snapshot header
    # Sent on the Lease stream once the lease is granted, while the turn runs: ("raw", bytes),
    # or (what, epoch offset) for a message about the held lease itself: "reject" or "accept"
    # the granted offer again, "release" or "renew" the lease, at its epoch plus the offset.
    lease_tail: tuple[tuple, ...] = ()
    # The events go on StreamWorkerEvents (then a "raw" tail item is a StreamWorkerEventsRequest
    # body), not StreamEvents.
    shared: bool = False


@dataclass
class _Worker:
    worker_id: str
    registration_id: str
    metadata: tuple[tuple[str, str], ...]


@dataclass
class Depth:
    """How far the sequences got: what a run that never opened a stream would leave at 0."""

    counts: Counter[str] = field(default_factory=Counter)


class StreamFuzzer:
    """Runs lease and events sequences as one owner's two paired workers."""

    def __init__(self, channel: grpc.Channel, api_key: str, requests: Requests, record: Record) -> None:
        self._channel = channel
        self._app_md = (("authorization", f"Bearer {api_key}"),)
        self._requests = requests
        self._record = record
        self.depth = Depth()
        self._request_ids = (f"req_{n:026d}" for n in itertools.count(1))
        # Runtimes no other call names: the lease worker is offered nothing, the events worker
        # only the turns of its own sessions, whose ids never reach the plain fuzz.
        self._lease_worker = self._pair("fuzz-lease", "fuzz-idle")
        self._events_worker = self._pair("fuzz-events", "script")

    def _pair(self, name: str, runtime: str) -> _Worker:
        code = agrpc.AdminServiceStub(self._channel).CreatePairingCode(
            apb.CreatePairingCodeRequest(), metadata=self._app_md, timeout=STEP_TIMEOUT_S
        )
        workers = wgrpc.WorkerServiceStub(self._channel)
        paired = workers.Pair(wpb.PairRequest(code=code.code, name=name), timeout=STEP_TIMEOUT_S)
        md = (("authorization", f"Bearer {paired.token}"),)
        registered = workers.Register(
            wpb.RegisterRequest(runtimes=[runtime], slots=64, name=name), metadata=md, timeout=STEP_TIMEOUT_S
        )
        return _Worker(paired.worker_id, registered.registration_id, md)

    # -- strategies ---------------------------------------------------------------------------

    def lease_plans(self) -> st.SearchStrategy[LeasePlan]:
        refs = st.lists(
            st.builds(
                lambda s, e: wpb.LeaseRef(session_id=s, lease_epoch=e),
                st.sampled_from(["ses_01AAAAAAAAAAAAAAAAAAAAAAAA", ""]),
                st.integers(0, 2**64 - 1),
            ),
            max_size=3,
        )
        well_formed = st.one_of(
            st.builds(lambda r: wpb.LeaseRequest(renew=wpb.RenewLeases(leases=r)), refs),
            st.builds(
                lambda c, x: wpb.LeaseRequest(renew=wpb.RenewLeases(held_digest=wpb.LeaseDigest(count=c, xor=x))),
                st.integers(0, 2**32 - 1),
                st.integers(0, 2**64 - 1),
            ),
            st.builds(
                lambda n: wpb.LeaseRequest(renew=wpb.RenewLeases(running_turns=n)), st.integers(-(2**31), 2**31 - 1)
            ),
            st.just(
                wpb.LeaseRequest(reject=wpb.RejectOffer(session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA", turn_id="trn_x"))
            ),
            st.just(wpb.LeaseRequest(release=wpb.ReleaseLease(session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA"))),
        ).map(lambda m: m.SerializeToString())
        malformed = self._requests.body(wpb.LeaseRequest.DESCRIPTOR)
        return st.builds(
            LeasePlan,
            st.lists(well_formed, max_size=3).map(tuple),
            st.lists(malformed, min_size=1, max_size=3).map(tuple),
            st.booleans(),
        )

    def events_plans(self) -> st.SearchStrategy[EventsPlan]:
        return st.booleans().flatmap(self._events_plans)

    def _events_plans(self, shared: bool) -> st.SearchStrategy[EventsPlan]:
        request_type = wpb.StreamWorkerEventsRequest if shared else wpb.StreamEventsRequest
        raw = st.tuples(st.just("raw"), self._requests.body(request_type.DESCRIPTOR))
        bodies = self._requests.message(rpb.EventBody.DESCRIPTOR).map(lambda m: m.SerializeToString())
        plausible = st.tuples(st.just("event"), bodies, st.sampled_from([0, 0, 0, 0, -1, 1]))
        request = self._requests.message(rpb.PendingRequest.DESCRIPTOR)
        known_kinds = st.sampled_from([k.number for k in rpb.RequestKind.DESCRIPTOR.values])
        requests = st.builds(_with_kind, request, known_kinds).map(lambda m: m.SerializeToString())
        states = st.one_of(st.sampled_from([v.number for v in rpb.RequestState.DESCRIPTOR.values]), st.integers())
        snapshot_chunks = st.one_of(
            self._requests.body(wpb.SnapshotRequest.DESCRIPTOR),
            st.just(b"\xff\xff\xff"),
        )
        return st.builds(
            EventsPlan,
            st.integers(0, 3),
            st.one_of(st.none(), requests),
            st.lists(_answers(), max_size=3).map(tuple),
            states.map(lambda n: max(-(2**31), min(2**31 - 1, n))),
            st.lists(st.one_of(raw, plausible, plausible), min_size=1, max_size=3).map(tuple),
            st.lists(snapshot_chunks, max_size=2).map(tuple),
            st.lists(
                st.one_of(
                    st.tuples(st.just("raw"), st.one_of(st.binary(max_size=32), st.just(b"\xff\xff\xff"))),
                    st.tuples(
                        st.sampled_from(["reject", "accept", "release", "renew"]), st.sampled_from([0, 0, 1, -1])
                    ),
                ),
                max_size=3,
            ).map(tuple),
            st.just(shared),
        )

    # -- sequences ----------------------------------------------------------------------------

    def lease_sequence(self, plan: LeasePlan) -> None:
        worker = self._lease_worker
        lease = self._open_lease(worker)
        if lease is None:
            return
        for message in plan.prefix:
            lease.send(message)
        for message in plan.tail:
            lease.send(message)
            self.depth.counts["lease_malformed_after_open"] += 1
        if plan.renew_after:
            lease.send(wpb.LeaseRequest(renew=wpb.RenewLeases()).SerializeToString())
        _, outcome = lease.finish()
        self._record("Lease", "worker_token", outcome)

    def events_sequence(self, plan: EventsPlan) -> None:
        worker = self._events_worker
        sessions = sgrpc.SessionServiceStub(self._channel)
        session_id = sessions.CreateSession(
            spb.CreateSessionRequest(runtime="script"), metadata=self._app_md, timeout=STEP_TIMEOUT_S
        ).session.session_id
        self._record("CreateSession", "api_key", Outcome(grpc.StatusCode.OK))
        turn_id = sessions.SendInput(
            spb.SendInputRequest(session_id=session_id, input="say fuzz"), metadata=self._app_md, timeout=STEP_TIMEOUT_S
        ).turn.turn_id
        self._record("SendInput", "api_key", Outcome(grpc.StatusCode.OK))
        lease = self._open_lease(worker)
        if lease is None:
            return
        epoch = self._take_offer(lease, session_id, turn_id)
        if epoch is None:
            self._end_lease(lease)
            return
        self.depth.counts["events_leases_granted"] += 1
        for item in plan.lease_tail:
            lease.send(_about_the_lease(item, session_id, turn_id, epoch))
            self.depth.counts["lease_messages_on_a_held_lease"] += 1
        self._resume(worker, session_id, epoch)
        acked, last_seq = self._stream_events(worker, session_id, epoch, turn_id, plan)
        self._snapshot(worker, session_id, epoch, turn_id, last_seq, plan.snapshot_tail)
        self._end_turn(_Events(self, worker, session_id, epoch, plan.shared), turn_id, acked)
        lease.send(
            wpb.LeaseRequest(
                release=wpb.ReleaseLease(session_id=session_id, lease_epoch=epoch, reason="fuzz sequence done")
            ).SerializeToString()
        )
        self._end_lease(lease)

    # -- steps --------------------------------------------------------------------------------

    def _open_lease(self, worker: _Worker) -> _Stream | None:
        """A Lease stream past its LeaseOpen; None (the call recorded) if it did not open."""
        lease = _Stream(self._channel, _LEASE, worker.metadata)
        opening = wpb.LeaseOpen(worker_id=worker.worker_id, registration_id=worker.registration_id)
        lease.send(wpb.LeaseRequest(open=opening).SerializeToString())
        first = lease.read()
        if first is None or wpb.LeaseResponse.FromString(first).WhichOneof("kind") != "opened":
            _, outcome = lease.finish()
            self._record("Lease", "worker_token", outcome)
            return None
        self.depth.counts["lease_streams_opened"] += 1
        return lease

    def _end_lease(self, lease: _Stream) -> None:
        _, outcome = lease.finish()
        self._record("Lease", "worker_token", outcome)

    def _take_offer(self, lease: _Stream, session_id: str, turn_id: str) -> int | None:
        """Accept the offer of `turn_id` and wait for its grant; the lease epoch, or None."""
        epoch = None
        while (answer := lease.read()) is not None:
            message = wpb.LeaseResponse.FromString(answer)
            kind = message.WhichOneof("kind")
            if kind == "offer" and message.offer.turn_id == turn_id:
                epoch = message.offer.lease_epoch
                accept = wpb.AcceptOffer(session_id=session_id, turn_id=turn_id, lease_epoch=epoch)
                lease.send(wpb.LeaseRequest(accept=accept).SerializeToString())
            elif kind == "granted" and message.granted.turn_id == turn_id:
                return epoch
        return None

    def _resume(self, worker: _Worker, session_id: str, epoch: int) -> None:
        stub = self._channel.unary_stream(_RESUME, request_serializer=_raw, response_deserializer=_raw)
        request = wpb.ResumeRequest(worker_id=worker.worker_id, session_id=session_id, lease_epoch=epoch)
        try:
            for _ in stub(request.SerializeToString(), metadata=worker.metadata, timeout=STEP_TIMEOUT_S):
                pass
            self._record("Resume", "worker_token", Outcome(grpc.StatusCode.OK))
        except grpc.RpcError as err:
            self._record("Resume", "worker_token", outcome_of(err))

    def _stream_events(
        self, worker: _Worker, session_id: str, epoch: int, turn_id: str, plan: EventsPlan
    ) -> tuple[int, int]:
        """turn_started and outputs, acknowledged; then the plan's tail. Returns the highest
        acknowledged worker_seq and the session's last seq the control plane reported."""
        bodies = [rpb.EventBody(turn_started=rpb.TurnStarted())]
        for n in range(plan.outputs):
            chunk = rpb.OutputChunk(stream=rpb.OUTPUT_STREAM_STDOUT, text=f"fuzz output {n}\n")
            bodies.append(rpb.EventBody(output=chunk))
        request_id, request = "", rpb.PendingRequest()
        if plan.request is not None:
            request = rpb.PendingRequest.FromString(plan.request)
            request.request_id = request_id = next(self._request_ids)
            bodies.append(rpb.EventBody(request_opened=rpb.RequestOpened(request=request)))
        events = [wpb.WorkerEvent(worker_seq=n, turn_id=turn_id, body=b) for n, b in enumerate(bodies, 1)]
        on = _Events(self, worker, session_id, epoch, plan.shared)
        on.send(events, first=True)
        acked = last_seq = 0
        # Until they are acknowledged, or refused: a refusal ends a StreamEvents call, while
        # StreamWorkerEvents answers it in-band and goes on (the lease tail may have released
        # the lease already).
        while acked < len(events) and not on.refused and (answer := on.stream.read()) is not None:
            acked, last_seq = on.acked(answer, acked, last_seq)
        if acked == len(events):
            self.depth.counts["events_streams_acked"] += 1
            if request_id:
                self._answer(session_id, request, plan)
            for item in plan.tail:
                if item[0] == "raw":
                    on.stream.send(item[1])
                else:
                    _, body, offset = item
                    event = wpb.WorkerEvent(
                        worker_seq=max(0, acked + 1 + offset), turn_id=turn_id, body=rpb.EventBody.FromString(body)
                    )
                    on.send([event])
                on.count("events_malformed_after_ack")
        answers, outcome = on.stream.finish()
        for answer in answers:
            acked, last_seq = on.acked(answer, acked, last_seq)
        self._record(on.method, "worker_token", outcome)
        return acked, last_seq

    def _answer(self, session_id: str, opened: rpb.PendingRequest, plan: EventsPlan) -> None:
        """The application answers the worker's pending request, and lists the requests."""
        sessions = sgrpc.SessionServiceStub(self._channel)
        self.depth.counts["requests_opened"] += 1
        for answer in plan.answers:
            if answer == OFFERED:
                answer = _offered_answer(opened)
            request = spb.RespondToRequestRequest(
                session_id=session_id, request_id=opened.request_id, response_json=answer
            )
            try:
                sessions.RespondToRequest(request, metadata=self._app_md, timeout=STEP_TIMEOUT_S)
                self.depth.counts["requests_resolved"] += 1
                self._record("RespondToRequest", "api_key", Outcome(grpc.StatusCode.OK))
            except grpc.RpcError as err:
                self._record("RespondToRequest", "api_key", outcome_of(err))
        listing = spb.ListRequestsRequest(session_id=session_id, state=plan.listed)  # type: ignore[arg-type]
        try:
            sessions.ListRequests(listing, metadata=self._app_md, timeout=STEP_TIMEOUT_S)
            self._record("ListRequests", "api_key", Outcome(grpc.StatusCode.OK))
        except grpc.RpcError as err:
            self._record("ListRequests", "api_key", outcome_of(err))

    def _snapshot(
        self, worker: _Worker, session_id: str, epoch: int, turn_id: str, seq: int, tail: tuple[bytes, ...]
    ) -> None:
        header = wpb.SnapshotRequest(
            worker_id=worker.worker_id,
            session_id=session_id,
            lease_epoch=epoch,
            seq=seq,
            runtime_metadata_json='{"runtime": "script"}',
            history=[rpb.HistoryItem(role=rpb.HISTORY_ITEM_ROLE_INPUT, text="say fuzz", turn_id=turn_id)],
        )
        chunks = [header.SerializeToString(), *tail]
        self.depth.counts["snapshot_malformed_after_header"] += len(tail)
        stub = self._channel.stream_unary(_SNAPSHOT, request_serializer=_raw, response_deserializer=_raw)
        try:
            stub(iter(chunks), metadata=worker.metadata, timeout=STEP_TIMEOUT_S)
            self._record("Snapshot", "worker_token", Outcome(grpc.StatusCode.OK))
        except grpc.RpcError as err:
            self._record("Snapshot", "worker_token", outcome_of(err))

    def _end_turn(self, on: _Events, turn_id: str, acked: int) -> None:
        """turn_completed on a second stream, as a worker resending after a broken one does."""
        done = wpb.WorkerEvent(
            worker_seq=acked + 1, turn_id=turn_id, body=rpb.EventBody(turn_completed=rpb.TurnCompleted())
        )
        on.send([done], first=True)
        answers, outcome = on.stream.finish()
        self._record(on.method, "worker_token", outcome)
        raised = [on.acked(a, 0, 0)[0] for a in answers]
        if outcome.code == grpc.StatusCode.OK and acked + 1 in raised:
            on.count("events_turns_completed")


class _Events:
    """One events stream of a sequence: StreamEvents, or StreamWorkerEvents (`shared`), whose
    batches name the session and whose in-band refusals are recorded as answers."""

    def __init__(self, fuzzer: StreamFuzzer, worker: _Worker, session_id: str, epoch: int, shared: bool) -> None:
        self._fuzzer = fuzzer
        self._worker = worker
        self._key = (session_id, epoch)
        self.shared = shared
        self.method = "StreamWorkerEvents" if shared else "StreamEvents"
        self.stream = _Stream(fuzzer._channel, _WORKER_EVENTS if shared else _EVENTS, worker.metadata)
        self.refused = False  # a batch of this session was refused in-band

    def count(self, what: str) -> None:
        """Count how deep a sequence got, on either stream, and apart for the shared one."""
        self._fuzzer.depth.counts[what] += 1
        if self.shared:
            self._fuzzer.depth.counts[f"{what}_shared"] += 1

    def send(self, events: list[wpb.WorkerEvent], *, first: bool = False) -> None:
        session_id, epoch = self._key
        worker_id = self._worker.worker_id if first else ""
        if self.shared:
            batch = wpb.SessionEventBatch(session_id=session_id, lease_epoch=epoch, events=events)
            message = wpb.StreamWorkerEventsRequest(worker_id=worker_id, batches=[batch]).SerializeToString()
        elif first:
            message = wpb.StreamEventsRequest(
                worker_id=worker_id, session_id=session_id, lease_epoch=epoch, events=events
            ).SerializeToString()
        else:
            message = wpb.StreamEventsRequest(events=events).SerializeToString()
        self.stream.send(message)

    def acked(self, answer: bytes, acked: int, last_seq: int) -> tuple[int, int]:
        """(acked, last_seq) raised by one answer; its in-band refusals are recorded."""
        if not self.shared:
            response = wpb.StreamEventsResponse.FromString(answer)
            return max(acked, response.acked_worker_seq), max(last_seq, response.last_seq)
        shared = wpb.StreamWorkerEventsResponse.FromString(answer)
        for ack in shared.acks:
            if (ack.session_id, ack.lease_epoch) == self._key:
                acked, last_seq = max(acked, ack.acked_worker_seq), max(last_seq, ack.last_seq)
        for refused in shared.refused:
            self.refused = self.refused or (refused.session_id, refused.lease_epoch) == self._key
            status = refused.status
            rich = any(d.type_url == _ERROR_INFO for d in status.details)
            code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN) if status.code else grpc.StatusCode.UNKNOWN
            self._fuzzer._record("StreamWorkerEvents", "worker_token", Outcome(code, status.message, rich))
            self._fuzzer.depth.counts["events_refused_in_band"] += 1
        return acked, last_seq


def _with_kind(request: rpb.PendingRequest, kind: int) -> rpb.PendingRequest:
    """Mostly a kind the contract knows, so the answer is checked against it."""
    out = rpb.PendingRequest()
    out.CopyFrom(request)
    if out.kind not in rpb.RequestKind.values():
        out.kind = kind  # type: ignore[assignment]
    return out


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_DECISIONS = ["accept", "acceptForSession", "decline", "cancel", "acceptWithExecpolicyAmendment", "", "x" * 60_000]
# An answer drawn as this is the request's own first offered decision, as the runtime listed it.
OFFERED = "<the first available decision>"


def _answers() -> st.SearchStrategy[str]:
    """Answers in the shapes the contract names, with arbitrary parts, and anything else."""
    decision = st.one_of(st.sampled_from(_DECISIONS), _JSON, st.dictionaries(st.sampled_from(_DECISIONS), _JSON))
    user_input = st.dictionaries(
        st.text(max_size=12), st.one_of(st.builds(lambda a: {"answers": a}, st.lists(_JSON, max_size=3)), _JSON)
    )
    return st.one_of(
        st.just(OFFERED),
        st.builds(lambda d: json.dumps({"decision": d}), decision),
        st.builds(lambda a: json.dumps({"answers": a}), user_input),
        _JSON.map(json.dumps),
        st.text(max_size=40),
    )


def _offered_answer(request: rpb.PendingRequest) -> str:
    """`{"decision": D}` for the request's first available decision, parsed when it is JSON."""
    entry = request.available_decisions[0] if request.available_decisions else "accept"
    try:
        decision = json.loads(entry) if entry.startswith("{") else entry
    except ValueError:
        decision = entry
    return json.dumps({"decision": decision})


def _about_the_lease(item: tuple, session_id: str, turn_id: str, epoch: int) -> bytes:
    what, arg = item
    if what == "raw":
        return arg
    at = max(0, epoch + arg)
    message = {
        "reject": lambda: wpb.LeaseRequest(
            reject=wpb.RejectOffer(session_id=session_id, turn_id=turn_id, lease_epoch=at, reason="fuzz")
        ),
        "accept": lambda: wpb.LeaseRequest(
            accept=wpb.AcceptOffer(session_id=session_id, turn_id=turn_id, lease_epoch=at)
        ),
        "release": lambda: wpb.LeaseRequest(
            release=wpb.ReleaseLease(session_id=session_id, lease_epoch=at, reason="fuzz")
        ),
        "renew": lambda: wpb.LeaseRequest(
            renew=wpb.RenewLeases(leases=[wpb.LeaseRef(session_id=session_id, lease_epoch=at)], running_turns=1)
        ),
    }[what]()
    return message.SerializeToString()
