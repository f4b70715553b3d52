"""A scripted in-process control plane (WorkerService) and a fake runtime, for testing the worker.

`FakeControlPlane` is a tiny grpc.aio WorkerService on 127.0.0.1 port 0 that records every
message in order and does what each test tells it: stop answering renewals, hold acks or
snapshots, fail Resume or Snapshot, push offers and drain. The worker under test is a real
`Worker` with a fake runtime (the runtime interface is a seam the worker owns). The fixtures
`fake_cp` and `start_worker` are made available to tests/integration by its conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.helpers.processes import eventually
from tether.execution_worker import (
    HistoryItem,
    HistoryRole,
    Item,
    ItemCompleted,
    ItemKind,
    Output,
    OutputStream,
    Runtime,
    TokenUsage,
    TurnCompleted,
    TurnInterrupted,
    Worker,
    WorkerSettings,
)
from tether.v1 import resources_pb2 as rpb
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

HEARTBEAT_S = 0.05
LIVENESS_S = 0.3


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _rich_error(code: grpc.StatusCode, reason: str, message: str) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=code.value[0], message=message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tether.dev"))
    status.details.append(detail)
    return (("grpc-status-details-bin", status.SerializeToString()),)


_DROP_STREAM = object()


class FakeControlPlane(wgrpc.WorkerServiceServicer):
    """A scripted WorkerService. `log` holds, in arrival order, ("lease", stream_no, request),
    ("snapshot", header, history), ("resume", request), ("events", request) and
    ("worker_events", request).

    It answers StreamWorkerEvents with UNIMPLEMENTED, as a control plane that predates it, so
    workers send on StreamEvents, unless `serves_worker_events` is set."""

    def __init__(self, *, liveness_s: float | None = LIVENESS_S) -> None:
        self.liveness_s = liveness_s
        self.lease_digests = False  # offered at Register: renewals then carry a digest
        self.snapshot_deltas = False  # offered at Register: snapshots may name a base
        self.unknown_bases: set[str] = set()  # base snapshot ids answered SNAPSHOT_BASE_UNKNOWN
        self.idle_heartbeat_s: float | None = None  # offered at Register when set
        self.resync_next = False  # answer the next renewal with resync
        self.log: list[tuple[Any, ...]] = []
        self.streams = 0
        self._out: asyncio.Queue[Any] | None = None
        self.answer_renewals = True
        self.auto_grant = True
        self.ack_gate = asyncio.Event()
        self.ack_gate.set()
        self.snapshot_gate = asyncio.Event()
        self.snapshot_gate.set()
        self.end_gate = asyncio.Event()  # held: the server is slow to end a half-closed stream
        self.end_gate.set()
        self.half_closed = 0
        self.snapshot_error: tuple[grpc.StatusCode, str] | None = None
        self.resume_error: tuple[grpc.StatusCode, str] | None = None
        self.resume_unavailable = 0  # the next this many Resume calls answer UNAVAILABLE
        self.resume_chunks: list[wpb.ResumeResponse] = []
        self.last_seq: dict[str, int] = {}  # session seq, shared by Resume and event acks
        self.stored: list[tuple[str, wpb.WorkerEvent]] = []
        self.registrations: list[wpb.RegisterRequest] = []
        self.serves_worker_events = False
        # StreamWorkerEvents: the next batch of each session named here is refused with this
        # (code, reason), once; a refused session's batches that do not resend from its
        # watermark are dropped until one does, as the real control plane does.
        self.refuse_next: dict[str, tuple[grpc.StatusCode, str]] = {}
        self.acked: dict[str, int] = {}
        self.break_worker_events = 0  # the next this many StreamWorkerEvents messages end the call, stored nowhere

    # -- what tests read -------------------------------------------------------------------

    def lease_requests(self, kind: str | None = None, stream: int | None = None) -> list[wpb.LeaseRequest]:
        return [
            entry[2]
            for entry in self.log
            if entry[0] == "lease"
            and (stream is None or entry[1] == stream)
            and (kind is None or entry[2].WhichOneof("kind") == kind)
        ]

    def snapshots(self) -> list[tuple[wpb.SnapshotRequest, list[rpb.HistoryItem]]]:
        return [(entry[1], entry[2]) for entry in self.log if entry[0] == "snapshot"]

    def resumes(self) -> list[wpb.ResumeRequest]:
        return [entry[1] for entry in self.log if entry[0] == "resume"]

    def terminal_events(self, session_id: str) -> list[wpb.WorkerEvent]:
        terminal = {"turn_completed", "turn_failed", "turn_interrupted"}
        return [e for sid, e in self.stored if sid == session_id and e.body.WhichOneof("kind") in terminal]

    def order(self) -> list[str]:
        """The log as short names: lease message kinds but renewals, "snapshot", "resume"."""
        names = []
        for entry in self.log:
            if entry[0] == "lease":
                names.append(entry[2].WhichOneof("kind"))
            elif entry[0] in ("snapshot", "resume"):
                names.append(entry[0])
        return [n for n in names if n != "renew"]

    # -- what tests do ----------------------------------------------------------------------

    def push(self, message: wpb.LeaseResponse) -> None:
        assert self._out is not None, "no Lease stream is open"
        self._out.put_nowait(message)

    def offer(
        self,
        session_id: str,
        turn_id: str = "",
        input: str = "",
        *,
        epoch: int = 1,
        runtime: str = "fake",
        resume_required: bool = False,
        restore_only: bool = False,
        granted: bool = False,
    ) -> None:
        """Push an offer; with `granted` it carries its grant (nothing to accept)."""
        self.push(
            wpb.LeaseResponse(
                offer=wpb.Offer(
                    session_id=session_id,
                    turn_id=turn_id,
                    input=input,
                    runtime=runtime,
                    lease_epoch=epoch,
                    resume_required=resume_required,
                    restore_only=restore_only,
                    last_seq=self.last_seq.get(session_id, 0),
                    granted=(
                        wpb.OfferGranted(session_id=session_id, turn_id=turn_id, lease_epoch=epoch) if granted else None
                    ),
                )
            )
        )

    def drop_stream(self) -> None:
        self.push(_DROP_STREAM)  # type: ignore[arg-type]

    # -- the service ------------------------------------------------------------------------

    async def Register(self, request, context):
        self.registrations.append(request)
        response = wpb.RegisterResponse(
            worker_id=request.worker_id,
            registration_id=f"reg_{self.streams + 1}",
            heartbeat_interval=_duration(HEARTBEAT_S),
            lease_ttl=_duration(5),
            offer_timeout=_duration(2),
            reconnect_backoff_initial=_duration(0.02),
            reconnect_backoff_max=_duration(0.1),
            max_events_per_message=100,
            worker_dead_grace=_duration(1),
        )
        if self.liveness_s is not None:
            response.liveness_timeout.CopyFrom(_duration(self.liveness_s))
        if self.idle_heartbeat_s is not None:
            response.idle_heartbeat_interval.CopyFrom(_duration(self.idle_heartbeat_s))
        response.lease_digests = self.lease_digests
        response.snapshot_deltas = self.snapshot_deltas
        return response

    async def Lease(self, request_iterator, context):
        requests = aiter(request_iterator)
        first = await anext(requests)
        self.streams += 1
        stream_no = self.streams
        self.log.append(("lease", stream_no, first))
        out: asyncio.Queue[Any] = asyncio.Queue()
        self._out = out
        await context.write(wpb.LeaseResponse(opened=wpb.LeaseOpened(worker_id=first.open.worker_id)))

        async def read() -> None:
            async for request in requests:
                self.log.append(("lease", stream_no, request))
                kind = request.WhichOneof("kind")
                if kind == "renew" and self.answer_renewals:
                    resync, self.resync_next = self.resync_next, False
                    out.put_nowait(wpb.LeaseResponse(renewed=wpb.LeasesRenewed(resync=resync)))
                elif kind == "accept" and self.auto_grant:
                    a = request.accept
                    out.put_nowait(
                        wpb.LeaseResponse(
                            granted=wpb.OfferGranted(
                                session_id=a.session_id, turn_id=a.turn_id, lease_epoch=a.lease_epoch
                            )
                        )
                    )
            self.half_closed += 1
            while not self.end_gate.is_set():  # slow to end, but not silent
                out.put_nowait(wpb.LeaseResponse(renewed=wpb.LeasesRenewed()))
                await asyncio.sleep(HEARTBEAT_S)
            out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (message := await out.get()) is not None:
                if message is _DROP_STREAM:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped by the test")
                await context.write(message)
        finally:
            reader.cancel()
            if self._out is out:
                self._out = None

    async def StreamEvents(self, request_iterator, context):
        session_id = ""
        async for request in request_iterator:
            session_id = request.session_id or session_id
            self.log.append(("events", request))
            await self.ack_gate.wait()
            for event in request.events:
                self.last_seq[session_id] = self.last_seq.get(session_id, 0) + 1
                self.stored.append((session_id, event))
            yield wpb.StreamEventsResponse(
                acked_worker_seq=request.events[-1].worker_seq, last_seq=self.last_seq[session_id]
            )

    async def StreamWorkerEvents(self, request_iterator, context):
        if not self.serves_worker_events:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        refused: set[str] = set()
        async for request in request_iterator:
            self.log.append(("worker_events", request))
            if self.break_worker_events > 0:
                self.break_worker_events -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "stream broken by the test")
            await self.ack_gate.wait()
            answer = wpb.StreamWorkerEventsResponse()
            for batch in request.batches:
                sid = batch.session_id
                if sid in refused and batch.events[0].worker_seq != self.acked.get(sid, 0) + 1:
                    continue
                refused.discard(sid)
                if sid in self.refuse_next:
                    code, reason = self.refuse_next.pop(sid)
                    status = status_pb2.Status.FromString(_rich_error(code, reason, "refused by the test")[0][1])
                    answer.refused.add(session_id=sid, lease_epoch=batch.lease_epoch).status.CopyFrom(status)
                    refused.add(sid)
                    continue
                for event in batch.events:
                    self.last_seq[sid] = self.last_seq.get(sid, 0) + 1
                    self.stored.append((sid, event))
                self.acked[sid] = batch.events[-1].worker_seq
                answer.acks.add(
                    session_id=sid,
                    lease_epoch=batch.lease_epoch,
                    acked_worker_seq=self.acked[sid],
                    last_seq=self.last_seq[sid],
                )
            yield answer

    async def Resume(self, request, context):
        self.log.append(("resume", request))
        if self.resume_unavailable > 0:
            self.resume_unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the control plane is restarting")
        if self.resume_error is not None:
            await context.abort(*self.resume_error)
        for chunk in self.resume_chunks:
            yield chunk

    async def Snapshot(self, request_iterator, context):
        header: wpb.SnapshotRequest | None = None
        history: list[rpb.HistoryItem] = []
        async for chunk in request_iterator:
            header = header or chunk
            history.extend(chunk.history)
        assert header is not None
        self.log.append(("snapshot", header, history))
        await self.snapshot_gate.wait()
        if self.snapshot_error is not None:
            code, reason = self.snapshot_error
            await context.abort(code, f"refused: {reason}", trailing_metadata=_rich_error(code, reason, reason))
        if header.base_snapshot_id in self.unknown_bases:
            code, reason = grpc.StatusCode.FAILED_PRECONDITION, "SNAPSHOT_BASE_UNKNOWN"
            await context.abort(code, "base not stored", trailing_metadata=_rich_error(code, reason, reason))
        return wpb.SnapshotResponse(snapshot_id=f"snp_{len(self.snapshots())}", seq=header.seq)


class FakeRuntime(Runtime):
    """Runs a turn as: one output chunk, then (once `gate` is set) TurnCompleted. Records what
    it was started with; `fail_start` makes start() raise. An input "reply: TEXT" also makes
    an agent message TEXT and a token usage of len(TEXT) tokens, as a model would."""

    def __init__(self, registry: RuntimeRegistry) -> None:
        self.registry = registry
        self.history: list[HistoryItem] = []
        self.started_with: list[HistoryItem] | None = None
        self.closed = False
        self._interrupted: asyncio.Event = asyncio.Event()

    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        if self.registry.fail_start:
            raise RuntimeError(self.registry.fail_start)
        self.started_with = list(history)
        self.history = list(history)
        self.thread_id = f"thread-{session_id}"  # known once started, as with Codex

    async def run_turn(self, turn_id: str, input: str) -> AsyncIterator[Any]:
        self.registry.turns.append((self, turn_id))
        self.history.append(HistoryItem(HistoryRole.INPUT, input, turn_id))
        if self.registry.first_event_after_s:
            await asyncio.sleep(self.registry.first_event_after_s)
        if input.startswith("reply: "):
            text = input.removeprefix("reply: ")
            yield ItemCompleted(Item(f"msg-{turn_id}", ItemKind.AGENT_MESSAGE, text=text, status="completed"))
            await asyncio.sleep(self.registry.between_events_s)
            yield TokenUsage(last_input_tokens=1, total_tokens=len(text))
            await asyncio.sleep(self.registry.between_events_s)
        yield Output(OutputStream.STDOUT, f"ran {input}\n")
        gate = asyncio.ensure_future(self.registry.gate.wait())
        interrupted = asyncio.ensure_future(self._interrupted.wait())
        await asyncio.wait({gate, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        gate.cancel()
        interrupted.cancel()
        self.history.append(HistoryItem(HistoryRole.OUTPUT, f"ran {input}\n", turn_id))
        if self._interrupted.is_set():
            self._interrupted.clear()
            yield TurnInterrupted("stopped")
        else:
            yield TurnCompleted(0)

    async def interrupt(self, reason: str) -> None:
        self._interrupted.set()

    def export_history(self) -> list[HistoryItem]:
        return list(self.history)

    def runtime_metadata(self) -> dict[str, Any]:
        return {"runtime": "fake"}

    @property
    def runtime_thread_id(self) -> str:
        return getattr(self, "thread_id", "")

    async def close(self) -> None:
        self.closed = True


class RuntimeRegistry:
    def __init__(self) -> None:
        self.instances: list[FakeRuntime] = []
        self.turns: list[tuple[FakeRuntime, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_start = ""
        self.first_event_after_s = 0.0  # how long a turn runs before its first event
        self.between_events_s = 0.0  # how long a "reply: " turn waits between its events

    def __call__(self) -> FakeRuntime:
        runtime = FakeRuntime(self)
        self.instances.append(runtime)
        return runtime


@pytest.fixture
async def fake_cp() -> AsyncIterator[tuple[FakeControlPlane, str]]:
    service = FakeControlPlane()
    server = grpc.aio.server()
    wgrpc.add_WorkerServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


class Running:
    """A Worker running in a task, with its fake runtimes; stopped at the end of the test."""

    def __init__(self, worker: Worker, registry: RuntimeRegistry) -> None:
        self.worker = worker
        self.registry = registry
        self.task = asyncio.create_task(worker.run())


@pytest.fixture
async def start_worker(tmp_path: Path):
    running: list[Running] = []

    def start(target: str, **overrides: Any) -> Running:
        settings = dict(
            workdir=tmp_path / f"w{len(running)}",
            control_plane=target,
            runtimes=("fake",),
            slots=2,
            worker_id="wkr_test",
            rpc_timeout_s=2.0,
            snapshot_timeout_s=2.0,
            resume_timeout_s=2.0,
            flush_timeout_s=2.0,
            drain_grace_s=5.0,
            # These tests are about the after-turn upload itself: one after every turn, as for a
            # runtime whose state the log lacks (test_snapshot_policy.py covers the skipping).
            snapshot_log_turns=1,
        )
        settings.update(overrides)
        registry = RuntimeRegistry()
        r = Running(Worker(WorkerSettings(**settings), runtimes={"fake": registry}), registry)
        running.append(r)
        return r

    yield start
    for r in running:
        await r.worker.close()
        await asyncio.gather(r.task, return_exceptions=True)


async def _connected(cp: FakeControlPlane, streams: int = 1) -> None:
    await eventually(lambda: cp.streams >= streams and cp._out is not None, timeout=3, what=f"lease stream {streams}")


async def _run_turn(cp: FakeControlPlane, session_id: str, turn_id: str, *, epoch: int = 1, **kw: Any) -> None:
    cp.offer(session_id, turn_id, f"cmd {turn_id}", epoch=epoch, **kw)
    await eventually(
        lambda: any(e.turn_id == turn_id for e in cp.terminal_events(session_id)),
        timeout=3,
        what=f"turn {turn_id} to end",
    )
