"""The worker's side of the WorkerService contract, against a scripted in-process control plane.

`FakeControlPlane` is a tiny grpc.aio WorkerService on 127.0.0.1 port 0 that records every
message in order and does what each test tells it: stop answering renewals, hold acks or
snapshots, fail Resume or Snapshot, push offers and drain. The worker under test is a real
`Worker` with a fake runtime (the runtime interface is a seam the worker owns), so these tests
pin the wire behaviour: liveness, drain, the snapshot policy, restore-only placements and
release reasons.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.helpers.processes import ROOT, eventually
from tether.execution_worker import (
    HistoryItem,
    HistoryRole,
    Output,
    OutputStream,
    Runtime,
    TurnCompleted,
    TurnInterrupted,
    Worker,
    WorkerSettings,
)
from tether.execution_worker._lease import LeaseTimings
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
    ("snapshot", header, history), ("resume", request) and ("events", request)."""

    def __init__(self, *, liveness_s: float | None = LIVENESS_S) -> None:
        self.liveness_s = liveness_s
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
        self.resume_chunks: list[wpb.ResumeResponse] = []
        self.last_seq: dict[str, int] = {}  # session seq, shared by Resume and event acks
        self.stored: list[tuple[str, wpb.WorkerEvent]] = []

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
    ) -> None:
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
                )
            )
        )

    def drop_stream(self) -> None:
        self.push(_DROP_STREAM)  # type: ignore[arg-type]

    # -- the service ------------------------------------------------------------------------

    async def Register(self, request, context):
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
                    out.put_nowait(wpb.LeaseResponse(renewed=wpb.LeasesRenewed()))
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

    async def Resume(self, request, context):
        self.log.append(("resume", request))
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
        return wpb.SnapshotResponse(snapshot_id=f"snp_{len(self.snapshots())}", seq=header.seq)


class FakeRuntime(Runtime):
    """Runs a turn as: one output chunk, then (once `gate` is set) TurnCompleted. Records what
    it was started with; `fail_start` makes start() raise."""

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

    async def run_turn(self, turn_id: str, input: str) -> AsyncIterator[Any]:
        self.registry.turns.append((self, turn_id))
        self.history.append(HistoryItem(HistoryRole.INPUT, input, turn_id))
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

    async def close(self) -> None:
        self.closed = True


class RuntimeRegistry:
    def __init__(self) -> None:
        self.instances: list[FakeRuntime] = []
        self.turns: list[tuple[FakeRuntime, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_start = ""

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


# -- A: liveness ---------------------------------------------------------------------------------


def test_liveness_timeout_comes_from_register_else_three_heartbeats():
    fallback = LeaseTimings()
    with_liveness = wpb.RegisterResponse(heartbeat_interval=_duration(2), liveness_timeout=_duration(7))
    assert LeaseTimings.from_response(with_liveness, fallback).liveness_timeout_s == 7
    without = wpb.RegisterResponse(heartbeat_interval=_duration(2))
    assert LeaseTimings.from_response(without, fallback).liveness_timeout_s == 6
    # Not what an earlier registration said: 3 heartbeats of this one.
    earlier = LeaseTimings.from_response(with_liveness, fallback)
    assert LeaseTimings.from_response(without, earlier).liveness_timeout_s == 6


async def test_a_deaf_server_is_dropped_after_the_liveness_timeout_and_leases_are_kept(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    # Answered renewals keep the stream: no reconnect over several liveness timeouts.
    await asyncio.sleep(3 * LIVENESS_S)
    assert cp.streams == 1
    assert len(cp.lease_requests("renew", stream=1)) >= 5

    cp.answer_renewals = False
    silent_since = time.monotonic()
    await eventually(lambda: cp.streams >= 2, timeout=3, what="reconnect after silence")
    elapsed = time.monotonic() - silent_since
    assert LIVENESS_S - HEARTBEAT_S <= elapsed < LIVENESS_S + 0.6, elapsed
    # The worker heartbeated into the silence before giving up on it, ...
    assert any(r.renew.leases for r in cp.lease_requests("renew", stream=1))
    # ... and still holds the session: the new stream's LeaseOpen lists it.
    reopen = cp.lease_requests("open", stream=2)[0].open
    assert [(ref.session_id, ref.lease_epoch) for ref in reopen.leases] == [("ses_a", 1)]
    assert w.worker.session_ids == ["ses_a"]
    cp.answer_renewals = True
    await asyncio.sleep(3 * LIVENESS_S)
    assert cp.streams == 2


async def test_a_cancel_landing_as_a_lease_write_fails_is_not_swallowed(tmp_path):
    """The stream teardown cancels the heartbeat and then the call, which fails the heartbeat's
    write in the same loop iteration; the heartbeat must still end, or the Lease loop waits
    for it forever and never reconnects (asyncio.wait_for on 3.11 swallowed it)."""
    from tether.execution_worker._lease import LeaseClient

    write_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Call:
        async def write(self, request: Any) -> None:
            await write_done

    client = LeaseClient(
        stub=None,
        settings=WorkerSettings(workdir=tmp_path),
        worker_id="wkr_test",
        runtimes=["fake"],
        handler=None,  # type: ignore[arg-type]
    )
    client._call = Call()  # type: ignore[assignment]
    sending = asyncio.create_task(client.send(wpb.LeaseRequest(renew=wpb.RenewLeases())))
    await asyncio.sleep(0.01)
    write_done.set_exception(asyncio.InvalidStateError("RPC already finished"))
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending


# -- B: drain ------------------------------------------------------------------------------------


async def test_drain_announces_then_snapshots_then_releases_with_a_reason(fake_cp, start_worker):
    cp, target = fake_cp
    # No after-turn snapshots: the one below is the drain's own.
    w = start_worker(target, snapshot_every_turns=0, drain_grace_s=4.0)
    await _connected(cp)
    await _run_turn(cp, "ses_idle", "trn_0")
    w.registry.gate.clear()
    cp.offer("ses_busy", "trn_1", "long")
    await eventually(lambda: w.worker.running_turn_count == 1, timeout=3, what="turn running")

    before = time.time()
    w.worker.request_drain()
    await eventually(lambda: cp.lease_requests("draining"), timeout=3, what="DrainStarted")
    deadline = cp.lease_requests("draining")[0].draining.deadline.ToDatetime().timestamp()
    assert before + 3.5 <= deadline <= time.time() + 4.5
    # Draining: a new offer is declined, the running turn goes on.
    cp.offer("ses_new", "trn_2", "x")
    cp.offer("ses_moved", epoch=2, restore_only=True, resume_required=True)
    await eventually(lambda: len(cp.lease_requests("reject")) == 2, timeout=3, what="rejects while draining")
    assert [r.reject.reason for r in cp.lease_requests("reject")] == ["worker draining"] * 2
    assert not cp.snapshots() and not cp.lease_requests("release")

    w.registry.gate.set()  # the running turn finishes; then the drain completes
    await asyncio.wait_for(w.task, 5)
    assert [e.turn_id for e in cp.terminal_events("ses_busy")] == ["trn_1"]
    releases = cp.lease_requests("release")
    assert sorted(r.release.session_id for r in releases) == ["ses_busy", "ses_idle"]
    assert {r.release.reason for r in releases} == {"worker drained"}
    assert all(r.release.lease_epoch == 1 for r in releases)
    snapshots = {h.session_id: (h, items) for h, items in cp.snapshots()}
    assert set(snapshots) == {"ses_busy", "ses_idle"}
    for session_id, (header, items) in snapshots.items():
        assert header.request_id == "" and header.lease_epoch == 1
        assert header.seq == cp.last_seq[session_id]  # covers every event of the session
        assert [i.role for i in items] == [rpb.HISTORY_ITEM_ROLE_INPUT, rpb.HISTORY_ITEM_ROLE_OUTPUT]
    # Per session: DrainStarted, then its snapshot, then its release.
    for session_id in ("ses_busy", "ses_idle"):
        names = []
        for entry in cp.log:
            if entry[0] == "lease" and entry[2].WhichOneof("kind") == "draining":
                names.append("draining")
            elif entry[0] == "snapshot" and entry[1].session_id == session_id:
                names.append("snapshot")
            elif (
                entry[0] == "lease"
                and entry[2].WhichOneof("kind") == "release"
                and entry[2].release.session_id == session_id
            ):
                names.append("release")
        assert names == ["draining", "snapshot", "release"], (session_id, names)


async def test_a_drained_worker_waits_for_the_server_to_end_the_stream(fake_cp, start_worker):
    """Closing the channel right after the last ReleaseLease could cancel the call before the
    server handled it; the worker half-closes and waits for the server to end the stream."""
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    cp.end_gate.clear()
    w.worker.request_drain()
    await eventually(lambda: cp.half_closed == 1, timeout=3, what="half-close")
    assert [r.release.reason for r in cp.lease_requests("release")] == ["worker drained"]
    await asyncio.sleep(2 * LIVENESS_S)
    assert not w.task.done() and cp.streams == 1  # waiting, and not reconnecting
    cp.end_gate.set()
    await asyncio.wait_for(w.task, 3)
    assert cp.streams == 1


async def test_drain_started_is_sent_once_per_stream_and_again_after_a_reconnect(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, drain_grace_s=4.0)
    await _connected(cp)
    w.registry.gate.clear()
    cp.offer("ses_a", "trn_1", "long")
    await eventually(lambda: w.worker.running_turn_count == 1, timeout=3, what="turn running")
    w.worker.request_drain()
    w.worker.request_drain(3.0)  # a second request moves the deadline closer, sends nothing
    await eventually(lambda: cp.lease_requests("draining", stream=1), timeout=3, what="DrainStarted")
    await asyncio.sleep(2 * HEARTBEAT_S)
    assert len(cp.lease_requests("draining", stream=1)) == 1

    cp.drop_stream()
    await _connected(cp, 2)
    await eventually(lambda: cp.lease_requests("draining", stream=2), timeout=3, what="DrainStarted again")
    # On the new stream it is the first thing said after LeaseOpen.
    assert [r.WhichOneof("kind") for r in cp.lease_requests(stream=2)][:2] == ["open", "draining"]
    await asyncio.sleep(2 * HEARTBEAT_S)
    assert len(cp.lease_requests("draining", stream=2)) == 1
    w.registry.gate.set()
    await asyncio.wait_for(w.task, 5)
    assert [r.release.reason for r in cp.lease_requests("release", stream=2)] == ["worker drained"]


async def test_drain_requested_by_the_server_drains(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    cp.push(wpb.LeaseResponse(drain=wpb.DrainRequested()))
    await asyncio.wait_for(w.task, 5)
    assert cp.order()[-3:] == ["draining", "snapshot", "release"]


async def test_drain_skips_a_snapshot_the_after_turn_policy_already_stored(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)  # snapshot after every turn
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: cp.snapshots(), timeout=3, what="after-turn snapshot")
    w.worker.request_drain()
    await asyncio.wait_for(w.task, 5)
    assert len(cp.snapshots()) == 1
    assert [r.release.reason for r in cp.lease_requests("release")] == ["worker drained"]


async def test_a_second_sigterm_stops_a_draining_worker_at_once(fake_cp, tmp_path):
    cp, target = fake_cp
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.execution_worker",
        "--control-plane",
        target,
        "--runtime",
        "shell",
        "--workdir",
        str(tmp_path / "w"),
        "--slots",
        "1",
        "--drain-grace-s",
        "30",
        "--log-level",
        "WARNING",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: cp.streams and cp._out is not None, timeout=10, what="worker process connected")
        cp.offer("ses_a", "trn_1", "sleep 30", runtime="shell")
        await eventually(lambda: any(sid == "ses_a" for sid, _ in cp.stored), timeout=3, what="turn started")
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: cp.lease_requests("draining"), timeout=3, what="DrainStarted")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 3) == 128 + signal.SIGTERM
        assert not cp.lease_requests("release")  # stopped, not drained: the lease just expires
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- C: snapshot policy --------------------------------------------------------------------------


async def test_a_snapshot_follows_each_turn_once_its_events_are_acked(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: cp.snapshots(), timeout=3, what="after-turn snapshot")
    header, items = cp.snapshots()[0]
    assert (header.session_id, header.lease_epoch, header.request_id) == ("ses_a", 1, "")
    assert header.seq == cp.last_seq["ses_a"] == 3  # turn_started, output, turn_completed
    assert [(i.role, i.text) for i in items] == [
        (rpb.HISTORY_ITEM_ROLE_INPUT, "cmd trn_1"),
        (rpb.HISTORY_ITEM_ROLE_OUTPUT, "ran cmd trn_1\n"),
    ]
    assert json.loads(header.runtime_metadata_json) == {"runtime": "fake"}
    await _run_turn(cp, "ses_a", "trn_2")
    await eventually(lambda: len(cp.snapshots()) == 2, timeout=3, what="second snapshot")
    assert cp.snapshots()[1][0].seq == 6 and len(cp.snapshots()[1][1]) == 4
    assert w.worker.session_ids == ["ses_a"]


async def test_an_upload_never_holds_up_the_next_turn(fake_cp, start_worker):
    cp, target = fake_cp
    start_worker(target)
    await _connected(cp)
    cp.snapshot_gate.clear()  # the control plane sits on every snapshot
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: cp.snapshots(), timeout=3, what="upload started")
    await _run_turn(cp, "ses_a", "trn_2")  # runs and ends while the upload hangs
    cp.snapshot_gate.set()
    await eventually(lambda: len(cp.snapshots()) == 2, timeout=3, what="second snapshot")
    # The first upload was captured at the end of trn_1 and is unaffected by trn_2.
    (first, first_items), (second, second_items) = cp.snapshots()
    assert (first.seq, len(first_items)) == (3, 2)
    assert (second.seq, len(second_items)) == (6, 4)


async def test_a_turn_that_starts_before_the_acks_makes_the_next_turn_end_cover_it(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    cp.ack_gate.clear()  # trn_1's events are held unacknowledged
    cp.offer("ses_a", "trn_1", "one")
    await eventually(
        lambda: len(w.registry.turns) == 1 and w.worker.running_turn_count == 0, timeout=3, what="trn_1 ran"
    )
    w.registry.gate.clear()
    cp.offer("ses_a", "trn_2", "two")
    await eventually(lambda: w.worker.running_turn_count == 1, timeout=3, what="trn_2 running")
    cp.ack_gate.set()
    await eventually(lambda: cp.terminal_events("ses_a"), timeout=3, what="trn_1 stored")
    await asyncio.sleep(0.2)
    assert not cp.snapshots()  # trn_1's snapshot was skipped: trn_2 had started
    w.registry.gate.set()
    await eventually(lambda: cp.snapshots(), timeout=3, what="snapshot after trn_2")
    await asyncio.sleep(0.1)
    [(header, items)] = cp.snapshots()
    assert header.seq == cp.last_seq["ses_a"] == 6 and len(items) == 4


@pytest.mark.parametrize(("every", "turns", "expected"), [(0, 3, 0), (2, 1, 0), (2, 2, 1), (2, 3, 1)])
async def test_snapshot_every_turns(fake_cp, start_worker, every, turns, expected):
    cp, target = fake_cp
    start_worker(target, snapshot_every_turns=every)
    await _connected(cp)
    for n in range(turns):
        await _run_turn(cp, "ses_a", f"trn_{n}")
    await asyncio.sleep(0.2)
    assert len(cp.snapshots()) == expected


async def test_lease_lost_on_an_upload_drops_the_session(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    cp.snapshot_error = (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: not w.worker.session_ids, timeout=3, what="session dropped")
    assert w.registry.instances[0].closed
    assert not cp.lease_requests("release")  # not ours any more: nothing to give back


async def test_snapshot_requested_uses_the_same_upload_with_its_request_id(fake_cp, start_worker):
    cp, target = fake_cp
    start_worker(target, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    cp.push(wpb.LeaseResponse(snapshot=wpb.SnapshotRequested(session_id="ses_a", lease_epoch=1, request_id="req_9")))
    await eventually(lambda: cp.snapshots(), timeout=3, what="requested snapshot")
    header, items = cp.snapshots()[0]
    assert (header.request_id, header.seq, len(items)) == ("req_9", 3, 2)


# -- D, E: restore-only placements -----------------------------------------------------------------


def _resume_material(session_id: str) -> list[wpb.ResumeResponse]:
    """A snapshot at seq 3 holding one turn, then a second turn's events up to seq 7."""

    def event(seq: int, turn_id: str, **body: Any) -> rpb.Event:
        return rpb.Event(session_id=session_id, seq=seq, turn_id=turn_id, body=rpb.EventBody(**body))

    return [
        wpb.ResumeResponse(
            snapshot_seq=3,
            runtime_metadata_json="{}",
            history=[
                rpb.HistoryItem(role=rpb.HISTORY_ITEM_ROLE_INPUT, text="echo one", turn_id="trn_1"),
                rpb.HistoryItem(role=rpb.HISTORY_ITEM_ROLE_OUTPUT, text="one\n", turn_id="trn_1"),
            ],
        ),
        wpb.ResumeResponse(
            events=[
                event(4, "trn_2", input_received=rpb.InputReceived(input="echo two")),
                event(5, "trn_2", turn_started=rpb.TurnStarted(worker_id="wkr_old")),
                event(6, "trn_2", output=rpb.OutputChunk(stream=rpb.OUTPUT_STREAM_STDOUT, text="two\n")),
                event(7, "trn_2", turn_completed=rpb.TurnCompleted()),
            ]
        ),
    ]


async def test_restore_only_offer_rehydrates_keeps_the_runtime_warm_and_confirms_with_a_snapshot(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_0", epoch=1)  # older local state, at epoch 1
    old_runtime = w.registry.instances[0]
    cp.resume_chunks = _resume_material("ses_a")
    cp.last_seq["ses_a"] = 7
    cp.offer("ses_a", epoch=2, resume_required=True, restore_only=True)
    await eventually(lambda: cp.snapshots(), timeout=3, what="confirmation snapshot")

    [accept] = cp.lease_requests("accept")[1:]
    assert (accept.accept.session_id, accept.accept.turn_id, accept.accept.lease_epoch) == ("ses_a", "", 2)
    [resume] = cp.resumes()[1:]
    assert (resume.session_id, resume.lease_epoch) == ("ses_a", 2)
    assert old_runtime.closed  # epoch 1's runtime was retired
    restored = w.registry.instances[1]
    assert [(h.role, h.text) for h in restored.started_with] == [
        (HistoryRole.INPUT, "echo one"),
        (HistoryRole.OUTPUT, "one\n"),
        (HistoryRole.INPUT, "echo two"),
        (HistoryRole.OUTPUT, "two\n"),
    ]
    header, items = cp.snapshots()[0]
    assert (header.session_id, header.lease_epoch, header.request_id) == ("ses_a", 2, "")
    assert header.seq == 7 and len(items) == 4  # covers all it was rehydrated from
    assert order_after(cp.order(), "accept") == ["resume", "snapshot"]
    assert [(r.session_id, r.lease_epoch) for r in w.worker.held_leases()] == [("ses_a", 2)]

    # The next turn at that epoch runs on the warm runtime: no second Resume.
    resumes = len(cp.resumes())
    await _run_turn(cp, "ses_a", "trn_3", epoch=2, resume_required=False)
    assert len(cp.resumes()) == resumes
    assert w.registry.turns[-1] == (restored, "trn_3")
    assert len(w.registry.instances) == 2


def order_after(names: list[str], last: str) -> list[str]:
    """The names after the last `last`."""
    index = len(names) - 1 - names[::-1].index(last)
    return names[index + 1 :]


@pytest.mark.parametrize(
    ("failure", "reason_prefix"),
    [
        ("resume", "rehydration failed: Resume failed: INTERNAL"),
        ("start", "rehydration failed: could not start the fake runtime"),
    ],
)
async def test_a_restore_that_cannot_rehydrate_releases_the_lease_with_the_reason(
    fake_cp, start_worker, failure, reason_prefix
):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    if failure == "resume":
        cp.resume_error = (grpc.StatusCode.INTERNAL, "the log is unreadable")
    else:
        w.registry.fail_start = "no history for you"
    cp.offer("ses_a", epoch=3, resume_required=True, restore_only=True)
    await eventually(lambda: cp.lease_requests("release"), timeout=3, what="release")
    [release] = cp.lease_requests("release")
    assert (release.release.session_id, release.release.lease_epoch) == ("ses_a", 3)
    assert release.release.reason.startswith(reason_prefix), release.release.reason
    assert w.worker.session_ids == [] and not w.worker.held_leases()
    await asyncio.sleep(0.1)
    assert not cp.snapshots()  # fail closed: never an empty runtime confirmed as restored
    assert all(r.closed for r in w.registry.instances)


async def test_restore_only_offers_follow_the_turn_rejection_rules(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, slots=1)
    await _connected(cp)
    cp.offer("ses_x", epoch=1, runtime="codex", restore_only=True, resume_required=True)
    await eventually(lambda: cp.lease_requests("reject"), timeout=3, what="runtime reject")
    assert cp.lease_requests("reject")[-1].reject.reason.startswith("runtime 'codex' not available")

    # An accepted restore holds the only slot until it is granted.
    cp.auto_grant = False
    cp.offer("ses_r", epoch=1, restore_only=True, resume_required=True)
    await eventually(lambda: cp.lease_requests("accept"), timeout=3, what="restore accepted")
    cp.offer("ses_t", "trn_1", "x")
    await eventually(lambda: len(cp.lease_requests("reject")) == 2, timeout=3, what="no-slot reject")
    assert cp.lease_requests("reject")[-1].reject.reason == "no free slot"
    cp.push(wpb.LeaseResponse(granted=wpb.OfferGranted(session_id="ses_r", turn_id="", lease_epoch=1)))
    await eventually(lambda: cp.snapshots(), timeout=3, what="restore confirmed")
    assert w.worker.session_ids == ["ses_r"]


# -- F: bounded memory ---------------------------------------------------------------------------


def _footprint(r: Running) -> dict[str, int]:
    """How many entries the worker's per-session structures hold, and how many runtimes are open."""
    sizes = r.worker._sessions.sizes()
    sizes["reservations"] = r.worker._turns.reserved
    sizes["open_runtimes"] = sum(1 for runtime in r.registry.instances if not runtime.closed)
    return sizes


def _revoke(cp: FakeControlPlane, session_id: str, epoch: int = 1) -> None:
    cp.push(wpb.LeaseResponse(revoked=wpb.LeaseRevoked(session_id=session_id, lease_epoch=epoch, reason="test")))


async def test_a_worker_keeps_the_sessions_it_holds_and_at_most_warm_sessions_runtimes(fake_cp, start_worker):
    cp, target = fake_cp
    warm = 4
    w = start_worker(target, warm_sessions=warm)
    await _connected(cp)
    sessions = [f"ses_{k:02d}" for k in range(30)]
    for k, session_id in enumerate(sessions):
        await _run_turn(cp, session_id, f"trn_{k}")
    # Every session is still held (its lease is renewed), but only `warm` keep a runtime.
    await eventually(lambda: _footprint(w)["live"] == warm, timeout=5, what="quiet sessions beyond the bound dormant")
    assert sorted(w.worker.session_ids) == sessions
    assert sorted((ref.session_id, ref.lease_epoch) for ref in w.worker.held_leases()) == [(s, 1) for s in sessions]
    assert _footprint(w) == {
        "live": warm,
        "dormant": len(sessions) - warm,
        "warm_runtimes": warm,
        "snapshot_tasks": 0,
        "reservations": 0,
        "open_runtimes": warm,
    }
    assert sorted(w.worker.warm_session_ids) == sessions[-warm:]  # the most recently used

    # Released sessions (revoked, here) leave nothing behind, warm or dormant.
    for session_id in sessions[10:]:
        _revoke(cp, session_id)
    await eventually(lambda: len(w.worker.session_ids) == 10, timeout=3, what="revocations")
    await eventually(lambda: _footprint(w)["open_runtimes"] == 0, timeout=3, what="warm runtimes of revoked closed")
    assert sorted(w.worker.session_ids) == sessions[:10]
    assert _footprint(w)["dormant"] == 10 and _footprint(w)["live"] == 0

    for session_id in sessions[:10]:
        _revoke(cp, session_id)
    await eventually(lambda: not w.worker.session_ids, timeout=3, what="every session revoked")
    assert _footprint(w) == dict.fromkeys(_footprint(w), 0)
    assert not w.worker.held_leases()
    await eventually(lambda: len(w.worker._tasks) == 1, timeout=3, what="only the lease loop left")


async def test_a_dormant_session_is_rehydrated_by_its_next_turn_and_numbers_its_events_on(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=1)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await _run_turn(cp, "ses_b", "trn_2")
    await eventually(lambda: w.worker.warm_session_ids == ["ses_b"], timeout=3, what="ses_a dormant")
    first = w.registry.instances[0]
    assert first.closed and sorted(w.worker.session_ids) == ["ses_a", "ses_b"]
    resumes = len(cp.resumes())  # each first turn rehydrated its new session

    await _run_turn(cp, "ses_a", "trn_3")
    [resume] = cp.resumes()[resumes:]
    assert (resume.session_id, resume.lease_epoch) == ("ses_a", 1)  # still its lease: no new epoch
    assert w.registry.turns[-1] == (w.registry.instances[2], "trn_3")
    # The woken session's outbox goes on where the closed one stopped: the server drops
    # duplicates by worker_seq, so numbering again from 1 would lose these events.
    assert [e.worker_seq for sid, e in cp.stored if sid == "ses_a"] == [1, 2, 3, 4, 5, 6]
    await eventually(lambda: w.worker.warm_session_ids == ["ses_a"], timeout=3, what="ses_b dormant")


async def test_a_session_goes_dormant_with_a_snapshot_covering_it_and_a_drain_releases_it(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=0, snapshot_every_turns=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    # No after-turn policy, but the runtime's history must not leave the worker unsnapshotted.
    await eventually(lambda: not w.worker.warm_session_ids, timeout=3, what="ses_a dormant")
    [(header, items)] = cp.snapshots()
    assert (header.session_id, header.seq, len(items)) == ("ses_a", cp.last_seq["ses_a"], 2)
    assert w.registry.instances[0].closed and w.worker.session_ids == ["ses_a"]

    w.worker.request_drain()
    await asyncio.wait_for(w.task, 5)
    [release] = cp.lease_requests("release")
    assert (release.release.session_id, release.release.reason) == ("ses_a", "worker drained")
    assert len(cp.snapshots()) == 1  # the dormant session's snapshot already covered it


async def test_a_snapshot_requested_of_a_dormant_session_rehydrates_it_first(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=0)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await eventually(lambda: not w.worker.warm_session_ids, timeout=3, what="ses_a dormant")
    resumes = len(cp.resumes())
    cp.resume_chunks = _resume_material("ses_a")
    cp.push(wpb.LeaseResponse(snapshot=wpb.SnapshotRequested(session_id="ses_a", lease_epoch=1, request_id="req_1")))
    await eventually(lambda: any(h.request_id == "req_1" for h, _ in cp.snapshots()), timeout=3, what="snapshot")
    [(header, items)] = [(h, i) for h, i in cp.snapshots() if h.request_id == "req_1"]
    assert [(r.session_id, r.lease_epoch) for r in cp.resumes()[resumes:]] == [("ses_a", 1)]
    assert (header.seq, len(items)) == (7, 4)
