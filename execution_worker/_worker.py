"""The public `Worker`: composes the Lease loop, the held sessions (runtime + event outbox each)
and the slots, under one lifecycle: run, drain, close.

Ownership: every background task is created through `Worker._spawn` (or owned by a session's
outbox, or by the Lease loop) and is cancelled and awaited by `close()`, which is idempotent.
Sessions are forgotten on exactly four paths: lease lost (revoked, lost in a renewal or open,
LEASE_LOST on a write), released (at the end of a drain, or after a failed restore), retired
by a newer epoch of the same session, or the worker closing.

Snapshots: a session's runtime is checkpointed after every `snapshot_every_turns` finished
turns (once the turn's events are acknowledged, unless the next turn already started), on a
SnapshotRequested, right after a restore-only placement (the control plane takes the first
snapshot at the new epoch as the confirmation that the restore worked) and at the end of a
drain. Each upload captures the history synchronously and sends it in a task of its own, so it
never holds up the next turn.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from tether.execution_worker._convert import (
    event_body,
    history_from_resume,
    history_to_proto,
    resume_watermark,
    turn_started_body,
)
from tether.execution_worker._credentials import CredentialsRejected
from tether.execution_worker._errors import describe, is_lease_lost
from tether.execution_worker._events import EventOutbox
from tether.execution_worker._lease import LeaseClient
from tether.execution_worker._runtime import (
    TERMINAL_EVENTS,
    HistoryItem,
    Runtime,
    RuntimeFactory,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    check_runtimes,
    codex_runtime,
    select_runtimes,
)
from tether.execution_worker._settings import WorkerSettings, resolve_worker_id
from tether.sdk.channel import WithMetadata, credential_metadata, make_channel
from tether.v1 import worker_service_pb2, worker_service_pb2_grpc

_log = logging.getLogger("tether.execution_worker")

#: History items per SnapshotRequest chunk.
SNAPSHOT_CHUNK_ITEMS = 500

#: ReleaseLease.reason at the end of a drain.
RELEASE_DRAINED = "worker drained"
#: ReleaseLease.reason prefix when a restore-only placement could not rehydrate.
RELEASE_REHYDRATION_FAILED = "rehydration failed"

#: After the drain grace, interrupted turns get this long to end.
_INTERRUPT_GRACE_S = 5.0

# Resume histories and snapshots can be large; the default 4 MiB receive cap is too tight.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Catches a dead TCP connection under streams that are open but quiet. The Lease stream's
    # heartbeats keep data flowing, so these pings never count as abusive on the server.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


class _LeaseLost(Exception):
    """A call of a session's was fenced off: the session is no longer this worker's."""


class _RehydrationFailed(Exception):
    """The session's runtime could not be rebuilt from its stored history; str() says why."""


@dataclass
class _Reservation:
    offer: worker_service_pb2.Offer
    expires_at: float


@dataclass(frozen=True)
class _SnapshotCapture:
    """What a snapshot upload sends, taken in one synchronous step so it is consistent."""

    session_id: str
    lease_epoch: int
    seq: int
    history: list[HistoryItem]
    metadata_json: str


@dataclass
class _Session:
    session_id: str
    lease_epoch: int
    runtime_name: str
    outbox: EventOutbox
    runtime: Runtime | None = None
    turn_id: str | None = None
    turn_task: asyncio.Task[None] | None = None
    # Rehydration of a restore-only placement; a turn granted meanwhile waits for it.
    restore_task: asyncio.Task[None] | None = None
    # An interrupt that arrived while the turn was still rehydrating.
    pending_interrupt: str | None = None
    dropped: bool = False
    # Session seq the runtime's history covered when it was rehydrated (events acknowledged
    # later move the watermark on; see `watermark`).
    history_seq: int = 0
    # Watermark of the latest snapshot stored at this epoch; None before the first.
    snapshot_seq: int | None = None
    # Snapshot uploads running in the background.
    snapshot_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Bumped when a turn is granted: an after-turn snapshot that sees it changed skips.
    turn_generation: int = 0
    turns_since_snapshot: int = 0

    def ref(self) -> worker_service_pb2.LeaseRef:
        return worker_service_pb2.LeaseRef(session_id=self.session_id, lease_epoch=self.lease_epoch)

    @property
    def watermark(self) -> int:
        """The session seq the runtime's history covers once every emitted event is acked."""
        return max(self.history_seq, self.outbox.last_seq)


class Worker:
    """A Tether execution worker: dials out to the control plane, takes offered turns for the
    runtimes it has, runs them, streams their events, and reconnects forever.

    Use as ``async with Worker(settings) as worker: await worker.run()``; `run()` returns after
    a drain (`request_drain()`, a DrainRequested from the server) or `close()`.
    `runtimes` and `channel` are test seams: fake runtimes, or an already-built channel.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        runtimes: Mapping[str, RuntimeFactory] | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = resolve_worker_id(settings.workdir, settings.worker_id)
        self._runtimes = dict(runtimes) if runtimes is not None else select_runtimes(settings.runtimes)
        if self._runtimes.get("codex") is codex_runtime:
            self._runtimes["codex"] = functools.partial(codex_runtime, settings.codex)
        check_runtimes(self._runtimes)
        self._channel = channel
        self._owns_channel = channel is None
        # Line-buffered so every offer is on disk even if the worker is killed.
        self._offer_trace = open(settings.offer_trace, "a", buffering=1) if settings.offer_trace else None
        self._stub: worker_service_pb2_grpc.WorkerServiceStub | None = None
        self._lease: LeaseClient | None = None
        self._sessions: dict[str, _Session] = {}
        self._reservations: dict[tuple[str, str], _Reservation] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._draining = False
        # When running turns stop being waited for: time.monotonic() and wall clock.
        self._drain_deadline = 0.0
        self._drain_deadline_wall = 0.0
        self._drain_requested = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._work_changed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._running = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def connected(self) -> bool:
        """True while the Lease stream is open."""
        return self._lease is not None and self._lease.connected

    @property
    def session_ids(self) -> list[str]:
        """Sessions this worker holds a lease on now."""
        return list(self._sessions)

    @property
    def running_turn_count(self) -> int:
        return sum(1 for s in self._sessions.values() if s.turn_task is not None)

    def request_drain(self, grace_s: float | None = None) -> None:
        """Start draining: no new offers, running turns get `grace_s` (default: the setting) to
        finish, events are flushed, final snapshots uploaded, leases released, then `run()`
        returns. Safe from a signal handler; a second call can only bring the deadline closer."""
        grace = self.settings.drain_grace_s if grace_s is None else max(0.0, grace_s)
        deadline = time.monotonic() + grace
        if not self._draining or deadline < self._drain_deadline:
            self._drain_deadline = deadline
            self._drain_deadline_wall = time.time() + grace
        if not self._draining:
            _log.info("drain requested; taking no new offers (grace %.1fs)", grace)
            self._draining = True
            if self._lease is not None:
                self._spawn(self._lease.announce_drain(self._drain_deadline_wall), "announce drain")
        self._drain_requested.set()
        # Reservations not yet granted would delay the drain for nothing; a closer deadline
        # must be noticed by the waiting drain.
        self._work_changed.set()

    async def run(self) -> None:
        """Run until drained or closed. Never raises for control-plane trouble: it reconnects;
        only credentials the control plane refuses (`CredentialsRejected`) end it."""
        if self._running:
            raise RuntimeError("Worker.run() is already running")
        self._running = True
        self.settings.workdir.mkdir(parents=True, exist_ok=True)
        if self._channel is None:
            # gRPC's own subchannel backoff (1 s growing to 120 s) would fail our calls fast
            # while it waits, overriding the server's reconnect hints: keep it short and let
            # the Lease loop's jittered backoff be the one that paces reconnects.
            backoff_options = [
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", int(self.settings.reconnect_backoff_max_s * 1000)),
            ]
            self._channel = make_channel(
                self.settings.control_plane,
                options=_CHANNEL_OPTIONS + backoff_options,
                tls_ca_file=self.settings.tls_ca_file,
                tls_cert_file=self.settings.tls_cert_file,
                tls_key_file=self.settings.tls_key_file,
            )
        self._stub = WithMetadata(
            worker_service_pb2_grpc.WorkerServiceStub(self._channel), credential_metadata(self.settings.token)
        )
        self._lease = LeaseClient(
            stub=self._stub,
            settings=self.settings,
            worker_id=self.worker_id,
            runtimes=list(self._runtimes),
            handler=self,
        )
        if self._draining:  # drain requested before run(): the first stream announces it
            self._spawn(self._lease.announce_drain(self._drain_deadline_wall), "announce drain")
        _log.info(
            "worker %s starting: control plane %s, runtimes %s, %d slots, workdir %s",
            self.worker_id,
            self.settings.control_plane,
            ",".join(self._runtimes),
            self.settings.slots,
            self.settings.workdir,
        )
        lease_task = self._spawn(self._lease.run(), "lease loop")
        drain = asyncio.create_task(self._drain_requested.wait())
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({drain, stop, lease_task}, return_when=asyncio.FIRST_COMPLETED)
            if self._drain_requested.is_set() and not self._stop_requested.is_set():
                await self._drain()
        finally:
            for task in (drain, stop):
                task.cancel()
            await self.close()
        rejected = lease_task.exception() if lease_task.done() and not lease_task.cancelled() else None
        if isinstance(rejected, CredentialsRejected):
            raise rejected

    async def close(self) -> None:
        """Stop everything now: kill running turns, drop sessions, close the channel.
        Idempotent and safe to call concurrently."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._stop_requested.set()
        if self._lease is not None:
            self._lease.stop()
        for session in list(self._sessions.values()):
            await self._forget(session, "worker closing")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_channel and self._channel is not None:
            await self._channel.close()
        if self._offer_trace is not None:
            self._offer_trace.close()
        _log.info("worker %s stopped", self.worker_id)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and isinstance(task.exception(), CredentialsRejected):
            return  # run() raises it: the operator must act
        if not task.cancelled() and task.exception() is not None:
            _log.error("task %r failed", task.get_name(), exc_info=task.exception())

    # -- waiting helpers (drain, tests) ------------------------------------------------------------

    async def wait_events_acked(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far, in every held session, is acknowledged."""
        outboxes = [s.outbox for s in self._sessions.values()]
        if not outboxes:
            return True
        results = await asyncio.gather(*(o.wait_acked(timeout) for o in outboxes))
        return all(results)

    def _busy(self) -> bool:
        """Turns running, offers accepted but not granted yet, or restores rehydrating."""
        return bool(
            self._reservations
            or any(s.turn_task is not None or s.restore_task is not None for s in self._sessions.values())
        )

    async def _wait_idle(self, deadline: Callable[[], float]) -> bool:
        """Wait until not `_busy()`; False once time.monotonic() passes `deadline()` (read
        again on every change, so a drain whose deadline moves closer notices)."""
        while self._busy():
            self._purge_expired_reservations()
            remaining = deadline() - time.monotonic()
            if remaining <= 0:
                return False
            self._work_changed.clear()
            try:
                # Not wait_for: on 3.11 it can swallow the cancellation a second SIGTERM sends.
                async with asyncio.timeout(remaining):
                    await self._work_changed.wait()
            except TimeoutError:
                pass
        return True

    async def _drain(self) -> None:
        _log.info(
            "draining: %d turns running, %.1fs to finish them",
            self.running_turn_count,
            max(0.0, self._drain_deadline - time.monotonic()),
        )
        if not await self._wait_idle(lambda: self._drain_deadline):
            _log.warning("drain grace over; interrupting %d running turns", self.running_turn_count)
            for session in self._sessions.values():
                if session.turn_task is not None:
                    self._interrupt_session(session, "worker draining")
            # Interrupts end turns within the runtime's kill grace; bound it anyway.
            interrupt_deadline = time.monotonic() + _INTERRUPT_GRACE_S
            await self._wait_idle(lambda: interrupt_deadline)
        if not await self.wait_events_acked(self.settings.flush_timeout_s):
            _log.warning("drain: some events were not acknowledged in %.1fs", self.settings.flush_timeout_s)
        # Each session: its final snapshot, then its release (sessions in parallel).
        await asyncio.gather(*(self._hand_back(s) for s in list(self._sessions.values())))
        if self._lease is not None:
            await self._lease.finish()
        _log.info("drained")

    async def _hand_back(self, session: _Session) -> None:
        """End of a drain for one session: upload a final snapshot of its warm runtime (so the
        next holder rehydrates from it), then release the lease."""
        if session.runtime is not None:
            await self._final_snapshot(session)
        if session.dropped:
            return  # lost while snapshotting: not ours to release
        await self._release(session, RELEASE_DRAINED)

    async def _final_snapshot(self, session: _Session) -> None:
        if not session.outbox.all_acked:
            # The watermark would not cover what the history holds; the log has it all anyway.
            _log.warning("no final snapshot of session %s: its last events were not acknowledged", session.session_id)
            return
        if session.snapshot_tasks:
            await asyncio.wait(set(session.snapshot_tasks), timeout=self.settings.snapshot_timeout_s)
        if session.dropped or session.runtime is None:
            return
        if session.snapshot_seq is not None and session.snapshot_seq >= session.watermark:
            _log.debug("session %s: the stored snapshot already covers seq %d", session.session_id, session.watermark)
            return
        await self._send_snapshot(self._capture_snapshot(session), request_id="")

    async def _release(self, session: _Session, reason: str) -> None:
        """Give the session's lease back with `reason` and forget the session."""
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
        session.dropped = True  # out of held_leases before the release is on the wire
        assert self._lease is not None
        released = await self._lease.send(
            worker_service_pb2.LeaseRequest(
                release=worker_service_pb2.ReleaseLease(
                    session_id=session.session_id, lease_epoch=session.lease_epoch, reason=reason
                )
            )
        )
        _log.info(
            "released session %s (epoch %d): %s%s",
            session.session_id,
            session.lease_epoch,
            reason,
            "" if released else " (not connected: the lease expires on the server)",
        )
        await self._forget(session, f"released: {reason}")

    # -- LeaseHandler ---------------------------------------------------------------------------

    def held_leases(self) -> Sequence[worker_service_pb2.LeaseRef]:
        return [s.ref() for s in self._sessions.values() if not s.dropped]

    def running_turns(self) -> int:
        return self.running_turn_count

    def on_heartbeat(self) -> None:
        self._purge_expired_reservations()

    def on_disconnected(self) -> None:
        # Grants for these would have come on the stream that just ended; the server re-offers.
        if self._reservations:
            self._reservations.clear()
            self._work_changed.set()

    def on_lost_leases(self, lost: Sequence[worker_service_pb2.LeaseRef], why: str) -> None:
        for ref in lost:
            self._drop_later(ref.session_id, ref.lease_epoch, why)

    async def on_lease_message(self, message: worker_service_pb2.LeaseResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "offer":
            if self._offer_trace is not None and not message.offer.restore_only:
                self._offer_trace.write(f"{message.offer.turn_id} {time.monotonic_ns()}\n")
            await self._on_offer(message.offer)
        elif kind == "granted":
            self._on_granted(message.granted)
        elif kind == "interrupt":
            self._on_interrupt(message.interrupt)
        elif kind == "revoked":
            revoked = message.revoked
            self._drop_later(revoked.session_id, revoked.lease_epoch, f"revoked: {revoked.reason or 'no reason'}")
        elif kind == "snapshot":
            request = message.snapshot
            self._spawn(self._snapshot_requested(request), f"snapshot {request.session_id}")
        elif kind == "drain":
            grace = None
            if message.drain.HasField("deadline"):
                deadline = message.drain.deadline
                grace = deadline.seconds + deadline.nanos / 1e9 - time.time()
            self.request_drain(grace)
        elif kind == "renewed":
            if message.renewed.lost_leases:
                self.on_lost_leases(message.renewed.lost_leases, "lost at renewal")
        elif kind == "answered":
            self._on_answered(message.answered)
        elif kind == "opened":
            pass  # only expected first; the Lease loop consumed it
        else:
            _log.debug("ignoring lease message %r", kind)

    # -- offers and turns ---------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.settings.slots - self.running_turn_count - len(self._reservations)

    def _purge_expired_reservations(self) -> None:
        now = asyncio.get_running_loop().time()
        expired = [key for key, r in self._reservations.items() if r.expires_at <= now]
        for key in expired:
            del self._reservations[key]
        if expired:
            self._work_changed.set()

    def _rejection(self, offer: worker_service_pb2.Offer) -> str | None:
        """Why the offer (a turn or a restore-only placement) is declined; None to accept."""
        if self._draining:
            return "worker draining"
        if offer.runtime not in self._runtimes:
            return f"runtime {offer.runtime!r} not available (have {', '.join(self._runtimes)})"
        session = self._sessions.get(offer.session_id)
        # A restore still rehydrating is not busy: a turn granted meanwhile waits for it.
        busy = session is not None and session.turn_task is not None
        if busy or any(sid == offer.session_id for sid, _ in self._reservations):
            return "session busy on this worker"
        self._purge_expired_reservations()
        if self._free_slots() <= 0:
            return "no free slot"
        return None

    async def _on_offer(self, offer: worker_service_pb2.Offer) -> None:
        assert self._lease is not None
        what = "restore" if offer.restore_only else "offer"
        reason = self._rejection(offer)
        if reason is not None:
            await self._lease.send(
                worker_service_pb2.LeaseRequest(
                    reject=worker_service_pb2.RejectOffer(
                        session_id=offer.session_id,
                        turn_id=offer.turn_id,
                        lease_epoch=offer.lease_epoch,
                        reason=reason,
                    )
                )
            )
            _log.info("%s %s/%s rejected: %s", what, offer.session_id, offer.turn_id, reason)
            return
        # Reserve before answering so a burst of offers cannot oversubscribe the slots.
        timings = self._lease.timings
        expires = asyncio.get_running_loop().time() + timings.offer_timeout_s + self.settings.rpc_timeout_s
        self._reservations[(offer.session_id, offer.turn_id)] = _Reservation(offer, expires)
        sent = await self._lease.send(
            worker_service_pb2.LeaseRequest(
                accept=worker_service_pb2.AcceptOffer(
                    session_id=offer.session_id, turn_id=offer.turn_id, lease_epoch=offer.lease_epoch
                )
            )
        )
        if sent:
            _log.info("%s %s/%s accepted (epoch %d)", what, offer.session_id, offer.turn_id, offer.lease_epoch)
        else:
            self._reservations.pop((offer.session_id, offer.turn_id), None)

    def _on_granted(self, granted: worker_service_pb2.OfferGranted) -> None:
        reservation = self._reservations.pop((granted.session_id, granted.turn_id), None)
        self._work_changed.set()
        if reservation is None:
            # Without the offer there is no input to run; the server times the turn out.
            _log.warning("grant for unknown offer %s/%s ignored", granted.session_id, granted.turn_id)
            return
        offer = reservation.offer
        epoch = granted.lease_epoch or offer.lease_epoch
        session = self._sessions.get(offer.session_id)
        if session is not None and session.lease_epoch != epoch:
            # A new epoch fences the old one: what we held under it may be stale, so retire it
            # and rehydrate (below, because the new session has no runtime).
            self._sessions.pop(session.session_id, None)
            session.dropped = True
            self._spawn(self._dispose(session), f"retire {session.session_id}@{session.lease_epoch}")
            session = None
        if offer.restore_only:
            if session is not None and (session.turn_task is not None or session.restore_task is not None):
                _log.warning("restore of session %s ignored: it is busy here at epoch %d", offer.session_id, epoch)
                return
            if session is None:
                session = self._new_session(offer.session_id, epoch, offer.runtime)
            session.restore_task = self._spawn(self._restore(session), f"restore {offer.session_id}")
            return
        if session is None:
            session = self._new_session(offer.session_id, epoch, offer.runtime)
        session.turn_id = offer.turn_id
        session.turn_generation += 1
        session.pending_interrupt = None
        session.turn_task = self._spawn(self._run_turn(session, offer), f"turn {offer.turn_id}")

    def _new_session(self, session_id: str, epoch: int, runtime_name: str) -> _Session:
        assert self._stub is not None and self._lease is not None
        lease = self._lease
        outbox = EventOutbox(
            stub=self._stub,
            worker_id=self.worker_id,
            session_id=session_id,
            lease_epoch=epoch,
            max_events_per_message=lambda: lease.timings.max_events_per_message,
            new_backoff=lease.new_backoff,
            on_lease_lost=lambda o: self._drop_later(o.session_id, o.lease_epoch, "LEASE_LOST on an event write"),
            rpc_timeout_s=self.settings.rpc_timeout_s,
        )
        outbox.start()
        session = _Session(session_id, epoch, runtime_name, outbox)
        self._sessions[session_id] = session
        return session

    async def _restore(self, session: _Session) -> None:
        """A restore-only placement: rehydrate the runtime and keep it warm, then confirm with
        a snapshot at the new epoch. Fails closed: a runtime that cannot be rebuilt from the
        history is never replaced by an empty one; the lease goes back with the reason."""
        try:
            runtime = await self._rehydrate(session, skip_turn_id="")
        except _LeaseLost:
            self._drop_later(session.session_id, session.lease_epoch, "LEASE_LOST on Resume")
            return
        except _RehydrationFailed as failure:
            session.restore_task = None
            await self._release(session, f"{RELEASE_REHYDRATION_FAILED}: {failure}")
            return
        finally:
            session.restore_task = None
            self._work_changed.set()
        if runtime is None:
            return  # the session was dropped meanwhile
        # Captured now, before a turn granted next could add to the history.
        self._spawn_snapshot(session, self._capture_snapshot(session), request_id="", why="restore")

    async def _run_turn(self, session: _Session, offer: worker_service_pb2.Offer) -> None:
        turn_id = offer.turn_id
        outbox = session.outbox
        terminal: object = None
        try:
            outbox.emit(
                turn_id, turn_started_body(self.worker_id, session.runtime.runtime_thread_id if session.runtime else "")
            )
            if session.restore_task is not None:
                # A turn right after a restore-only placement runs on the runtime it rebuilds.
                await asyncio.wait({session.restore_task})
            runtime = session.runtime
            if runtime is None or offer.resume_required:
                try:
                    runtime = await self._rehydrate(session, skip_turn_id=turn_id)
                except _LeaseLost:
                    self._drop_later(session.session_id, session.lease_epoch, "LEASE_LOST on Resume")
                    return
                except _RehydrationFailed as failure:
                    # Fails closed: never run the turn on an empty history by mistake.
                    terminal = TurnFailed(f"could not rehydrate session {session.session_id}: {failure}")
                    outbox.emit(turn_id, event_body(terminal))
                    return
                if runtime is None:
                    return
            if session.pending_interrupt is not None:
                terminal = TurnInterrupted(session.pending_interrupt)
                outbox.emit(turn_id, event_body(terminal))
                return
            limit = self.settings.turn_timeout_s
            timer = (
                asyncio.get_running_loop().call_later(
                    limit,
                    self._interrupt_session,
                    session,
                    f"the turn ran longer than the worker's turn timeout ({limit:g} s)",
                )
                if limit > 0
                else None
            )
            try:
                async for event in runtime.run_turn(turn_id, offer.input):
                    if isinstance(event, TERMINAL_EVENTS):
                        if terminal is not None:
                            continue  # exactly one terminal event per turn, whatever the runtime does
                        terminal = event
                    outbox.emit(turn_id, event_body(event))
            finally:
                if timer is not None:
                    timer.cancel()
            if terminal is None:
                terminal = TurnFailed("the runtime ended the turn without a result")
                outbox.emit(turn_id, event_body(terminal))
        except asyncio.CancelledError:
            raise  # the session was dropped or the worker closes: the lease is not ours to write
        except Exception as error:
            _log.exception("turn %s of session %s failed in the worker", turn_id, session.session_id)
            if terminal is None and not session.dropped:
                terminal = TurnFailed(f"worker error: {describe(error)}")
                outbox.emit(turn_id, event_body(terminal))
        finally:
            session.turn_id = None
            session.turn_task = None
            session.pending_interrupt = None
            self._work_changed.set()
            if terminal is not None:
                _log.info(
                    "turn %s of session %s finished: %s", turn_id, session.session_id, _describe_terminal(terminal)
                )
                self._after_turn(session)

    def _after_turn(self, session: _Session) -> None:
        """The after-turn snapshot policy: every `snapshot_every_turns` finished turns."""
        every = self.settings.snapshot_every_turns
        if session.dropped or session.runtime is None or every <= 0:
            return
        session.turns_since_snapshot += 1
        if session.turns_since_snapshot >= every:
            self._spawn(
                self._snapshot_after_turn(session, session.turn_generation),
                f"after-turn snapshot {session.session_id}",
            )

    async def _snapshot_after_turn(self, session: _Session, generation: int) -> None:
        # Waits only for the events emitted so far (the ended turn's); the outbox closing
        # (lease lost, session dropped) ends the wait with False.
        if not await session.outbox.wait_acked():
            return
        # Debounced: a session that gets its next turn within the idle time snapshots after
        # that turn instead, so back-to-back turns do not pay for an upload each. Nothing is at
        # risk meanwhile: Resume replays the log after the last snapshot.
        if self.settings.snapshot_idle_s > 0:
            await asyncio.sleep(self.settings.snapshot_idle_s)
        if session.dropped or session.runtime is None:
            return
        if session.turn_generation != generation or session.turn_task is not None:
            return  # the next turn started: its end covers this one
        session.turns_since_snapshot = 0
        self._spawn_snapshot(session, self._capture_snapshot(session), request_id="", why="after turn")

    async def _rehydrate(self, session: _Session, *, skip_turn_id: str) -> Runtime | None:
        """Start a runtime from the session's stored history (the snapshot, then the events
        after it, leaving out `skip_turn_id`'s input, which the runtime adds when it runs the
        turn). Returns None when the session was dropped meanwhile; raises `_LeaseLost`, or
        `_RehydrationFailed` saying why."""
        if session.runtime is not None:
            old, session.runtime = session.runtime, None
            await _close_quietly(old)
        try:
            history, watermark = await self._resume(session, skip_turn_id)
        except _LeaseLost:
            raise
        except Exception as error:
            _log.warning("session %s: Resume failed: %s", session.session_id, describe(error))
            raise _RehydrationFailed(f"Resume failed: {describe(error)}") from error
        runtime = self._runtimes[session.runtime_name]()
        try:
            await runtime.start(session.session_id, self.settings.workdir, history)
        except Exception as error:
            await _close_quietly(runtime)
            message = f"could not start the {session.runtime_name} runtime: {describe(error)}"
            _log.warning("session %s: %s", session.session_id, message)
            raise _RehydrationFailed(message) from error
        if session.dropped:
            await _close_quietly(runtime)
            return None
        session.runtime = runtime
        session.history_seq = watermark
        _log.info(
            "session %s rehydrated with %d history items (up to seq %d)",
            session.session_id,
            len(history),
            watermark,
        )
        return runtime

    async def _resume(self, session: _Session, skip_turn_id: str) -> tuple[list[HistoryItem], int]:
        assert self._stub is not None
        call = self._stub.Resume(
            worker_service_pb2.ResumeRequest(
                worker_id=self.worker_id, session_id=session.session_id, lease_epoch=session.lease_epoch
            ),
            timeout=self.settings.resume_timeout_s,
        )
        try:
            chunks = [chunk async for chunk in call]
        except grpc.aio.AioRpcError as error:
            if is_lease_lost(error):
                raise _LeaseLost() from error
            raise
        return history_from_resume(chunks, skip_turn_id=skip_turn_id), resume_watermark(chunks)

    def _on_interrupt(self, request: worker_service_pb2.InterruptRequested) -> None:
        session = self._sessions.get(request.session_id)
        if session is None or session.turn_task is None or session.turn_id != request.turn_id:
            _log.debug("interrupt for %s/%s ignored: not running here", request.session_id, request.turn_id)
            return
        _log.info("interrupting turn %s of session %s", request.turn_id, request.session_id)
        self._interrupt_session(session, request.reason or "interrupted by request")

    def _on_answered(self, answered: worker_service_pb2.RequestAnswered) -> None:
        """An application answered a pending request: hand it to the runtime, once. Repeats (a
        reconnect re-sends answers) and answers for turns no longer running here are ignored."""
        session = self._sessions.get(answered.session_id)
        if session is None or session.runtime is None or session.turn_id != answered.turn_id:
            _log.debug(
                "answer to %s/%s ignored: its turn is not running here", answered.session_id, answered.request_id
            )
            return
        try:
            answer = json.loads(answered.response_json)
        except ValueError:
            _log.warning("answer to request %s is not JSON; ignoring it", answered.request_id)
            return
        self._spawn(self._deliver_answer(session.runtime, answered.request_id, answer), f"answer {answered.request_id}")

    async def _deliver_answer(self, runtime: Runtime, request_id: str, answer: Any) -> None:
        if await runtime.respond(request_id, answer):
            _log.info("request %s answered", request_id)
        else:
            _log.debug("request %s already answered or gone; repeat ignored", request_id)

    def _interrupt_session(self, session: _Session, reason: str) -> None:
        session.pending_interrupt = reason
        if session.runtime is not None:
            self._spawn(session.runtime.interrupt(reason), f"interrupt {session.session_id}")

    # -- snapshots --------------------------------------------------------------------------------

    async def _snapshot_requested(self, request: worker_service_pb2.SnapshotRequested) -> None:
        """Answer a SnapshotRequested once the session is quiet: no turn or restore half-way,
        and every event the history reflects stored (so the watermark covers them)."""
        session = self._sessions.get(request.session_id)
        if session is None or session.lease_epoch != request.lease_epoch:
            _log.warning(
                "snapshot of session %s (epoch %d) requested but its lease is not held here",
                request.session_id,
                request.lease_epoch,
            )
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.snapshot_timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or session.dropped:
                _log.warning("snapshot of session %s abandoned: session never became quiet", request.session_id)
                return
            task = session.turn_task or session.restore_task
            if task is not None:
                await asyncio.wait({task}, timeout=remaining)
                continue
            if not session.outbox.all_acked:
                await session.outbox.wait_acked(remaining)
                continue
            break
        if session.runtime is None:
            _log.warning("snapshot of session %s requested but its runtime is not held here", request.session_id)
            return
        await self._send_snapshot(
            self._capture_snapshot(session), request_id=request.request_id, timeout_s=deadline - loop.time()
        )

    def _capture_snapshot(self, session: _Session) -> _SnapshotCapture:
        """The session's history and watermark, now. Call with the session quiet."""
        assert session.runtime is not None
        return _SnapshotCapture(
            session_id=session.session_id,
            lease_epoch=session.lease_epoch,
            seq=session.watermark,
            history=session.runtime.export_history(),
            metadata_json=json.dumps(session.runtime.runtime_metadata()),
        )

    def _spawn_snapshot(self, session: _Session, capture: _SnapshotCapture, *, request_id: str, why: str) -> None:
        task = self._spawn(self._send_snapshot(capture, request_id=request_id), f"{why} snapshot {session.session_id}")
        session.snapshot_tasks.add(task)
        task.add_done_callback(session.snapshot_tasks.discard)

    async def _send_snapshot(
        self, capture: _SnapshotCapture, *, request_id: str, timeout_s: float | None = None
    ) -> bool:
        """Upload one captured snapshot (every snapshot path ends here). True once stored; a
        LEASE_LOST answer drops the session."""

        def chunks():
            history = capture.history
            header = worker_service_pb2.SnapshotRequest(
                worker_id=self.worker_id,
                session_id=capture.session_id,
                lease_epoch=capture.lease_epoch,
                seq=capture.seq,
                runtime_metadata_json=capture.metadata_json,
                request_id=request_id,
            )
            header.history.extend(history_to_proto(h) for h in history[:SNAPSHOT_CHUNK_ITEMS])
            yield header
            for start in range(SNAPSHOT_CHUNK_ITEMS, len(history), SNAPSHOT_CHUNK_ITEMS):
                yield worker_service_pb2.SnapshotRequest(
                    history=[history_to_proto(h) for h in history[start : start + SNAPSHOT_CHUNK_ITEMS]]
                )

        assert self._stub is not None
        timeout = self.settings.snapshot_timeout_s if timeout_s is None else max(0.1, timeout_s)
        try:
            response = await self._stub.Snapshot(chunks(), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if is_lease_lost(error):
                self._drop_later(capture.session_id, capture.lease_epoch, "LEASE_LOST on Snapshot")
            else:
                _log.warning("snapshot of session %s failed: %s", capture.session_id, describe(error))
            return False
        session = self._sessions.get(capture.session_id)
        if session is not None and session.lease_epoch == capture.lease_epoch:
            session.snapshot_seq = max(session.snapshot_seq or 0, capture.seq)
        _log.info(
            "snapshot %s of session %s stored (seq %d, %d items)",
            response.snapshot_id,
            capture.session_id,
            capture.seq,
            len(capture.history),
        )
        return True

    # -- dropping sessions ---------------------------------------------------------------------------

    def _drop_later(self, session_id: str, lease_epoch: int, why: str) -> None:
        """Forget a session whose lease is gone. Callable from anywhere, including an outbox's
        own task: the teardown runs in a task of its own."""
        # An accepted offer revoked before its grant: free the slot it reserved.
        for key, reservation in list(self._reservations.items()):
            if key[0] == session_id and (not lease_epoch or reservation.offer.lease_epoch == lease_epoch):
                del self._reservations[key]
                self._work_changed.set()
        session = self._sessions.get(session_id)
        if session is None or (lease_epoch and session.lease_epoch != lease_epoch):
            return
        _log.warning("dropping session %s (epoch %d): %s", session_id, session.lease_epoch, why)
        self._sessions.pop(session_id, None)
        session.dropped = True
        self._work_changed.set()
        self._spawn(self._dispose(session), f"drop {session_id}")

    async def _forget(self, session: _Session, why: str) -> None:
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
        session.dropped = True
        _log.debug("forgetting session %s: %s", session.session_id, why)
        await self._dispose(session)

    async def _dispose(self, session: _Session) -> None:
        current = asyncio.current_task()
        # The turn's runtime kills its process on the way out; uploads of a lease that is
        # gone would only be refused.
        tasks = [
            t
            for t in (session.turn_task, session.restore_task, *session.snapshot_tasks)
            if t is not None and t is not current
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if session.runtime is not None:
            await _close_quietly(session.runtime)
            session.runtime = None
        await session.outbox.close()
        self._work_changed.set()


async def _close_quietly(runtime: Runtime) -> None:
    try:
        await runtime.close()
    except Exception:
        _log.exception("runtime close failed")


def _describe_terminal(event: object) -> str:
    if isinstance(event, TurnCompleted):
        return f"completed (exit {event.exit_code})"
    if isinstance(event, TurnFailed):
        return f"failed: {event.error_message}"
    if isinstance(event, TurnInterrupted):
        return f"interrupted: {event.reason}"
    return repr(event)
