"""The public `Worker`: composes the Lease loop (`_lease`), the held sessions (`_session`), the
offers and turns (`_turns`) and the snapshots (`_snapshots`) under one lifecycle: run, drain,
close. It owns the channel, the drain, the routing of Lease messages, and rehydration (Resume,
then a fresh runtime started from the stored history).

Ownership: every background task is created through the worker's `TaskGroup` (or owned by a
session's outbox, by the shared event stream, or by the Lease loop) and is cancelled and
awaited by `close()`, which is idempotent. Sessions are forgotten on exactly four paths: lease lost (revoked, lost in a
renewal or open, LEASE_LOST on a write), released (at the end of a drain, after a failed
restore, or when a quiet session beyond the warm bound is cooled, see `_session`), retired by
a newer epoch of the same session, or the worker closing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import grpc

from tether.execution_worker._backoff import Backoff
from tether.execution_worker._checkpoints import Checkpoints, WorkspaceError, restore_failure
from tether.execution_worker._codex_check import CodexUnavailable, codex_problem
from tether.execution_worker._context import Link, TaskGroup
from tether.execution_worker._convert import history_from_resume, portability_pb, resume_watermark, runtime_state
from tether.execution_worker._credentials import CredentialsRejected
from tether.execution_worker._discovery import check_runtimes, codex_runtime, select_runtimes
from tether.execution_worker._errors import describe, is_lease_lost
from tether.execution_worker._event_stream import EventStream
from tether.execution_worker._events import EventOutbox
from tether.execution_worker._lease import LeaseClient
from tether.execution_worker._session import (
    LeaseLost,
    RehydrationFailed,
    Session,
    SessionTable,
    close_quietly,
)
from tether.execution_worker._settings import WorkerSettings, resolve_worker_id
from tether.execution_worker._snapshots import Snapshots
from tether.execution_worker._turns import Turns
from tether.execution_worker.runtime import (
    HistoryItem,
    Portability,
    Runtime,
    RuntimeFactory,
    honours_output_schema,
    runtime_portability,
)
from tether.sdk.channel import WithMetadata, credential_metadata, make_channel
from tether.v1 import resources_pb2, worker_service_pb2, worker_service_pb2_grpc

_log = logging.getLogger("tether.execution_worker")

#: ReleaseLease.reason at the end of a drain.
RELEASE_DRAINED = "worker drained"

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
        # The built-in codex runtime is offered only once `run()` has checked it can work here.
        self._check_codex = self._runtimes.get("codex") is codex_runtime
        if self._check_codex:
            self._runtimes["codex"] = functools.partial(codex_runtime, settings.codex)
        check_runtimes(self._runtimes)
        self._channel = channel
        self._owns_channel = channel is None
        # Line-buffered so every offer is on disk even if the worker is killed.
        self._offer_trace = open(settings.offer_trace, "a", buffering=1) if settings.offer_trace else None
        self._link = Link()
        self._tasks = TaskGroup(quiet=(CredentialsRejected,))  # run() raises it: the operator must act
        self._work_changed = asyncio.Event()
        self._sessions = SessionTable(
            warm_sessions=settings.warm_sessions,
            tasks=self._tasks,
            link=self._link,
            changed=self._work_changed,
            new_outbox=self._new_outbox,
            before_cooling=lambda session: self._snapshots.final(session),
            awaits_grant=lambda session_id: self._turns.awaits_grant(session_id),
        )
        self._checkpoints = Checkpoints(
            worker_id=self.worker_id,
            link=self._link,
            state_dir=settings.workdir / ".tether",
            ignores=settings.workspace_ignores,
        )
        self._snapshots = Snapshots(
            settings=settings,
            worker_id=self.worker_id,
            link=self._link,
            tasks=self._tasks,
            sessions=self._sessions,
            drop_later=self._drop_later,
            checkpoints=self._checkpoints,
            rebuilds_from_log=lambda name: runtime_portability(self._runtimes[name]) is Portability.HISTORY,
        )
        self._turns = Turns(
            settings=settings,
            worker_id=self.worker_id,
            runtimes=self._runtimes,
            link=self._link,
            tasks=self._tasks,
            sessions=self._sessions,
            snapshots=self._snapshots,
            rehydrate=self._rehydrate,
            drop_later=self._drop_later,
            changed=self._work_changed,
        )
        self._draining = False
        # When running turns stop being waited for: time.monotonic() and wall clock.
        self._drain_deadline = 0.0
        self._drain_deadline_wall = 0.0
        self._drain_requested = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._running = False
        # Every session's events, on one stream (made with the first outbox).
        self._event_stream: EventStream | None = None

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
        return self._link.is_open and self._link.lease.connected

    @property
    def session_ids(self) -> list[str]:
        """Sessions this worker holds a lease on now."""
        return self._sessions.session_ids()

    @property
    def warm_session_ids(self) -> list[str]:
        """Held sessions whose runtime is live here now (the rest rehydrate first: a restore or
        a turn on its way)."""
        return [s.session_id for s in self._sessions.live() if s.runtime is not None]

    @property
    def running_turn_count(self) -> int:
        return self._sessions.running_turns()

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
            self._draining = self._turns.draining = True
            self._sessions.cooling_allowed = False
            if self._link.is_open:
                self._tasks.spawn(self._link.lease.announce_drain(self._drain_deadline_wall), "announce drain")
        self._drain_requested.set()
        # Reservations not yet granted would delay the drain for nothing; a closer deadline
        # must be noticed by the waiting drain.
        self._work_changed.set()

    async def _offer_codex_only_if_usable(self) -> None:
        """Drop the codex runtime when it cannot work here (no binary, an unsupported version,
        no credentials), saying in one line what to do; raises `CodexUnavailable` when nothing
        is left to offer."""
        problem = await codex_problem(self.settings.codex, self.settings.workdir / ".tether" / "codex-check")
        if problem is None:
            return
        del self._runtimes["codex"]  # shared with Turns: offers for codex are refused from now on
        if not self._runtimes:
            raise CodexUnavailable(f"the codex runtime cannot run here: {problem}")
        _log.error("not offering the codex runtime: %s", problem)

    async def run(self) -> None:
        """Run until drained or closed. Never raises for control-plane trouble: it reconnects;
        only credentials the control plane refuses (`CredentialsRejected`) end it."""
        if self._running:
            raise RuntimeError("Worker.run() is already running")
        self._running = True
        self.settings.workdir.mkdir(parents=True, exist_ok=True)
        if self._check_codex:
            self._check_codex = False
            await self._offer_codex_only_if_usable()
        if self._channel is None:
            # gRPC's own subchannel backoff (1 s growing to 120 s) would fail our calls fast
            # while it waits, overriding the server's reconnect hints: keep it short (it only
            # decides how long a refused connection is believed) and let the Lease loop's
            # jittered backoff be the one that paces reconnects.
            backoff_options = [
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", int(min(self.settings.reconnect_backoff_max_s, 1.0) * 1000)),
            ]
            self._channel = make_channel(
                self.settings.control_plane,
                options=_CHANNEL_OPTIONS + backoff_options,
                tls_ca_file=self.settings.tls_ca_file,
                tls_cert_file=self.settings.tls_cert_file,
                tls_key_file=self.settings.tls_key_file,
            )
        # The proxy adds the worker token to every call and otherwise is the stub.
        stub = cast(
            worker_service_pb2_grpc.WorkerServiceStub,
            WithMetadata(
                worker_service_pb2_grpc.WorkerServiceStub(self._channel), credential_metadata(self.settings.token)
            ),
        )
        lease = LeaseClient(
            stub=stub,
            settings=self.settings,
            worker_id=self.worker_id,
            runtimes=list(self._runtimes),
            handler=self,
            output_schema_runtimes=[name for name, f in self._runtimes.items() if honours_output_schema(f)],
            runtime_portability={name: portability_pb(runtime_portability(f)) for name, f in self._runtimes.items()},
        )
        self._link.open(stub, lease)
        if self._draining:  # drain requested before run(): the first stream announces it
            self._tasks.spawn(lease.announce_drain(self._drain_deadline_wall), "announce drain")
        _log.info(
            "worker %s starting: control plane %s, runtimes %s, %d slots, workdir %s",
            self.worker_id,
            self.settings.control_plane,
            ",".join(self._runtimes),
            self.settings.slots,
            self.settings.workdir,
        )
        lease_task = self._tasks.spawn(lease.run(), "lease loop")
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
        if self._link.is_open:
            self._link.lease.stop()
        for session in self._sessions.live():
            await self._sessions.forget(session, "worker closing")
        if self._event_stream is not None:
            await self._event_stream.close()
        await self._tasks.close()
        if self._owns_channel and self._channel is not None:
            await self._channel.close()
        if self._offer_trace is not None:
            self._offer_trace.close()
        _log.info("worker %s stopped", self.worker_id)

    def _new_outbox(self, session_id: str, lease_epoch: int) -> EventOutbox:
        lease = self._link.lease
        if self._event_stream is None:
            self._event_stream = EventStream(
                stub=self._link.stub,
                worker_id=self.worker_id,
                max_events_per_message=lambda: lease.timings.max_events_per_message,
                new_backoff=lease.new_backoff,
                rpc_timeout_s=self.settings.rpc_timeout_s,
            )
        outbox = EventOutbox(
            stub=self._link.stub,
            worker_id=self.worker_id,
            session_id=session_id,
            lease_epoch=lease_epoch,
            max_events_per_message=lambda: lease.timings.max_events_per_message,
            new_backoff=lease.new_backoff,
            on_lease_lost=lambda o: self._drop_later(o.session_id, o.lease_epoch, "LEASE_LOST on an event write"),
            rpc_timeout_s=self.settings.rpc_timeout_s,
            stream=self._event_stream,
        )
        outbox.start()
        return outbox

    def _drop_later(self, session_id: str, lease_epoch: int, why: str) -> None:
        """Forget a session whose lease is gone, and any offer of its that awaits a grant."""
        self._turns.forget_reservations(session_id, lease_epoch)
        self._sessions.drop_later(session_id, lease_epoch, why)

    # -- drain ------------------------------------------------------------------------------------

    async def wait_events_acked(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far, in every held session, is acknowledged."""
        outboxes = [s.outbox for s in self._sessions.live()]
        if not outboxes:
            return True
        results = await asyncio.gather(*(o.wait_acked(timeout) for o in outboxes))
        return all(results)

    def _busy(self) -> bool:
        """Turns running, offers accepted but not granted yet, or restores rehydrating."""
        return bool(self._turns.reserved or self._sessions.busy())

    async def _wait_idle(self, deadline: Callable[[], float]) -> bool:
        """Wait until not `_busy()`; False once time.monotonic() passes `deadline()` (read
        again on every change, so a drain whose deadline moves closer notices)."""
        while self._busy():
            self._turns.purge_expired()
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
            for session in self._sessions.live():
                if session.turn_task is not None:
                    self._turns.interrupt_session(session, "worker draining")
            # Interrupts end turns within the runtime's kill grace; bound it anyway.
            interrupt_deadline = time.monotonic() + _INTERRUPT_GRACE_S
            await self._wait_idle(lambda: interrupt_deadline)
        if not await self.wait_events_acked(self.settings.flush_timeout_s):
            _log.warning("drain: some events were not acknowledged in %.1fs", self.settings.flush_timeout_s)
        # Sessions being cooled now finish that first (their final snapshot, then their release).
        await self._sessions.settle(self.settings.snapshot_timeout_s)
        # Each session: its final snapshot, then its release (sessions in parallel).
        await asyncio.gather(*(self._hand_back(s) for s in self._sessions.live()))
        await self._link.lease.finish()
        _log.info("drained")

    async def _hand_back(self, session: Session) -> None:
        """End of a drain for one session: upload a final snapshot of its warm runtime (so the
        next holder rehydrates from it), then release the lease."""
        await self._snapshots.final(session)
        if session.dropped:
            return  # lost while snapshotting: not ours to release
        await self._sessions.release(session.session_id, session.lease_epoch, RELEASE_DRAINED, session)

    # -- LeaseHandler ---------------------------------------------------------------------------

    def held_leases(self) -> Sequence[worker_service_pb2.LeaseRef]:
        return self._sessions.held_refs()

    def known_turns(self) -> Sequence[str]:
        return sorted(self._sessions.known_turns() | self._turns.granted_waiting())

    def running_turns(self) -> int:
        return self.running_turn_count

    def on_heartbeat(self) -> None:
        self._turns.purge_expired()
        self._sessions.trim_soon()

    def on_disconnected(self) -> None:
        self._turns.clear_reservations()

    def on_lost_leases(self, lost: Sequence[worker_service_pb2.LeaseRef], why: str) -> None:
        for ref in lost:
            self._drop_later(ref.session_id, ref.lease_epoch, why)

    async def on_lease_message(self, message: worker_service_pb2.LeaseResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "offer":
            if self._offer_trace is not None and not message.offer.restore_only:
                self._offer_trace.write(f"{message.offer.turn_id} {time.monotonic_ns()}\n")
            await self._turns.on_offer(message.offer)
        elif kind == "granted":
            self._turns.on_granted(message.granted)
        elif kind == "interrupt":
            self._turns.on_interrupt(message.interrupt)
        elif kind == "revoked":
            revoked = message.revoked
            self._drop_later(revoked.session_id, revoked.lease_epoch, f"revoked: {revoked.reason or 'no reason'}")
        elif kind == "snapshot":
            request = message.snapshot
            self._tasks.spawn(self._snapshots.requested(request), f"snapshot {request.session_id}")
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
            self._turns.on_answered(message.answered)
        elif kind == "opened":
            pass  # only expected first; the Lease loop consumed it
        else:
            _log.debug("ignoring lease message %r", kind)

    # -- rehydration ------------------------------------------------------------------------------

    async def _rehydrate(self, session: Session, *, skip_turn_id: str) -> Runtime | None:
        """Start a runtime from the session's stored history (the snapshot, then the events
        after it, leaving out `skip_turn_id`'s input, which the runtime adds when it runs the
        turn). Returns None when the session was dropped meanwhile; raises `LeaseLost`, or
        `RehydrationFailed` saying why."""
        if session.runtime is not None:
            old, session.runtime = session.runtime, None
            await close_quietly(old)
        # A control plane that is away (restarting, or a replica handing over) answers UNAVAILABLE:
        # Resume and the workspace's downloads are retried, with backoff, while the session is
        # still ours (its lease neither lost nor revoked) and within one Resume deadline; the
        # lease survives the control plane's restart.
        retry = _RetryWhileOurs(session, self.settings)
        try:
            history, watermark, manifest, state = await self._resume(session, skip_turn_id, retry)
        except LeaseLost:
            raise
        except Exception as error:
            _log.warning("session %s: Resume failed: %s", session.session_id, describe(error))
            raise RehydrationFailed(f"Resume failed: {describe(error)}") from error
        runtime = self._runtimes[session.runtime_name]()
        try:
            await self._restore_workspace(session, runtime, manifest, retry)
        except BaseException:
            await close_quietly(runtime)
            raise
        try:
            if runtime_portability(self._runtimes[session.runtime_name]) is Portability.STATE:
                runtime.restore_state(state)
            await runtime.start(session.session_id, self.settings.workdir, history)
        except Exception as error:
            await close_quietly(runtime)
            message = f"could not start the {session.runtime_name} runtime: {describe(error)}"
            _log.warning("session %s: %s", session.session_id, message)
            raise RehydrationFailed(message) from error
        if session.dropped:
            await close_quietly(runtime)
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

    async def _restore_workspace(
        self,
        session: Session,
        runtime: Runtime,
        manifest: resources_pb2.WorkspaceManifest | None,
        retry: _RetryWhileOurs,
    ) -> None:
        """Before the runtime starts: make its workspace match the session's latest checkpoint
        (failing closed with `RehydrationFailed`), and open the workspace for checkpoints."""
        root = runtime.workspace_dir(session.session_id, self.settings.workdir)
        if root is None:
            if manifest is not None:
                _log.info(
                    "session %s: the %s runtime keeps its files on the worker; its checkpoint is not restored",
                    session.session_id,
                    session.runtime_name,
                )
            return
        workspace = self._checkpoints.open(session.session_id, root)
        if manifest is not None:
            try:
                stats = await self._checkpoints.restore(workspace, manifest, session.lease_epoch, retry=retry)
                # A move (or a cleanup) is reported; a new session's first empty workspace is not.
                if session.lease_epoch > 1 or stats.files_written or stats.files_removed:
                    workspace.restored = stats
            except grpc.aio.AioRpcError as error:
                if is_lease_lost(error):
                    raise LeaseLost() from error
                _log.warning("session %s: %s", session.session_id, restore_failure(error))
                raise RehydrationFailed(restore_failure(error)) from error
            except Exception as error:  # fail closed, whatever went wrong: the runtime never starts
                if not isinstance(error, (WorkspaceError, OSError)):
                    _log.exception("session %s: workspace restore failed", session.session_id)
                _log.warning("session %s: %s", session.session_id, restore_failure(error))
                raise RehydrationFailed(restore_failure(error)) from error
        session.workspace = workspace

    async def _resume(
        self, session: Session, skip_turn_id: str, retry: _RetryWhileOurs
    ) -> tuple[list[HistoryItem], int, resources_pb2.WorkspaceManifest | None, dict[str, Any]]:
        """Download the session's history, its workspace manifest and its latest snapshot's
        runtime metadata (`{}` without a snapshot), retrying UNAVAILABLE as `retry` allows."""
        request = worker_service_pb2.ResumeRequest(
            worker_id=self.worker_id, session_id=session.session_id, lease_epoch=session.lease_epoch
        )
        while True:
            call = self._link.stub.Resume(request, timeout=retry.remaining_s())
            try:
                chunks = [chunk async for chunk in call]
            except grpc.aio.AioRpcError as error:
                if is_lease_lost(error):
                    raise LeaseLost() from error
                if await retry(error):
                    continue
                raise
            manifest = chunks[0].workspace if chunks and chunks[0].HasField("workspace") else None
            state = runtime_state(chunks[0].runtime_metadata_json if chunks else "")
            return history_from_resume(chunks, skip_turn_id=skip_turn_id), resume_watermark(chunks), manifest, state


class _RetryWhileOurs:
    """The retry policy of one rehydration's calls (Resume, then GetBlobs): an UNAVAILABLE answer
    is retried after a backoff while the session is still held here and the deadline
    (`resume_timeout_s` from the first call) leaves room; any other answer is final."""

    def __init__(self, session: Session, settings: WorkerSettings) -> None:
        self._session = session
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + settings.resume_timeout_s
        self._backoff = Backoff(settings.reconnect_backoff_initial_s, settings.reconnect_backoff_max_s)

    def remaining_s(self) -> float:
        """The time left for the next call (at least 0.1 s)."""
        return max(0.1, self._deadline - self._loop.time())

    async def __call__(self, error: grpc.aio.AioRpcError) -> bool:
        """Wait out a backoff and say True when `error` is worth another try."""
        delay = self._backoff.next_delay()
        if (
            error.code() != grpc.StatusCode.UNAVAILABLE
            or self._session.dropped
            or self._loop.time() + delay >= self._deadline
        ):
            return False
        _log.info(
            "session %s: the control plane answered %s; retrying in %.2fs while the lease is ours",
            self._session.session_id,
            describe(error),
            delay,
        )
        await asyncio.sleep(delay)
        return not self._session.dropped
