"""The Lease loop: register, hold the long-lived Lease stream, heartbeat on it, and reconnect
forever when it ends.

The loop owns the connection and its timing; what the messages mean is the worker's business,
handed over through `LeaseHandler`. Heartbeats ride on the stream and every renewal is
answered, so a renewal left unanswered for the liveness timeout (set at Register) means the
stream is deaf (alive but receiving nothing, as with a half-dead TCP connection): the loop
then drops it and reconnects rather than heartbeating into the void. Leases stay held across
the reconnect; the next LeaseOpen lists them.

Renewals are cheap for the server when it allows it (RegisterResponse.lease_digests): they
carry the digest of the held leases (`lease_digest`), and the full list only when the server
answers `resync`. A worker that holds no lease and runs no turn renews only every idle
heartbeat interval (RegisterResponse.idle_heartbeat_interval); HTTP/2 keepalive pings watch
the connection meanwhile.

The loop also owns the drain announcement: once the worker starts draining, every stream it
opens carries one DrainStarted, written before any other message on that stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import grpc
from google.protobuf import timestamp_pb2

from tether.execution_worker._backoff import Backoff
from tether.execution_worker._credentials import REJECTED_CODES, CredentialsRejected
from tether.execution_worker._errors import describe
from tether.execution_worker._settings import WorkerSettings
from tether.sdk.channel import tls_hint
from tether.v1 import resources_pb2, worker_service_pb2, worker_service_pb2_grpc

_log = logging.getLogger(__name__)

#: What a control plane that does not say takes in one message (gRPC's default).
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20

#: Protocol features this worker implements, announced in RegisterRequest.features.
FEATURES = (
    "lease_renew",
    "resume",
    "snapshot",
    "interrupt",
    "drain",
    "release",
    "liveness",
    "drain_started",
    "restore_only",
    "release_reason",
    "snapshot_after_turn",
    "granted_offer",
    "reports_turns",
)

#: Without a liveness timeout from the server, the stream is deaf after this many heartbeat
#: intervals of silence.
LIVENESS_FALLBACK_INTERVALS = 3


def lease_digest(leases: Sequence[worker_service_pb2.LeaseRef]) -> worker_service_pb2.LeaseDigest:
    """The LeaseDigest of `leases` (see worker_service.proto): their count and the XOR of the
    first 8 bytes, big-endian, of SHA-256 of "<session_id>/<lease_epoch>" for each."""
    xor = 0
    for ref in leases:
        xor ^= int.from_bytes(hashlib.sha256(f"{ref.session_id}/{ref.lease_epoch}".encode()).digest()[:8], "big")
    return worker_service_pb2.LeaseDigest(count=len(leases), xor=xor)


def _version() -> str:
    try:
        return importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


#: The longest reconnect delay, as a share of the lease TTL: a worker retries several times
#: within one TTL, so a control plane back from a restart finds it before its leases expire.
RECONNECT_SHARE_OF_TTL = 0.25


@dataclass(frozen=True)
class LeaseTimings:
    """The timings the server set in its RegisterResponse (the server is the authority)."""

    heartbeat_interval_s: float = 5.0
    lease_ttl_s: float = 30.0
    offer_timeout_s: float = 5.0
    reconnect_backoff_initial_s: float = 0.2
    reconnect_backoff_max_s: float = 5.0
    max_events_per_message: int = 500
    #: Silence on the Lease stream after which it is dead (the server's, else 3 heartbeats).
    liveness_timeout_s: float = LIVENESS_FALLBACK_INTERVALS * 5.0
    #: How long the server waits for a closed stream to come back before moving its sessions
    #: (informational: the worker reconnects as fast as its backoff allows anyway).
    worker_dead_grace_s: float = 0.0
    #: How often to renew while holding no lease and running no turn (0: every heartbeat).
    idle_heartbeat_interval_s: float = 0.0
    #: Whether the server takes a digest of the held leases in place of their list.
    lease_digests: bool = False
    #: Whether the server takes snapshots that send only the history after a stored one.
    snapshot_deltas: bool = False

    @classmethod
    def from_response(cls, response: worker_service_pb2.RegisterResponse, fallback: LeaseTimings) -> LeaseTimings:
        def seconds(field: str, default: float) -> float:
            if not response.HasField(field):
                return default
            value = getattr(response, field).ToTimedelta().total_seconds()
            return value if value > 0 else default

        heartbeat_interval_s = seconds("heartbeat_interval", fallback.heartbeat_interval_s)
        lease_ttl_s = seconds("lease_ttl", fallback.lease_ttl_s)
        return cls(
            heartbeat_interval_s=heartbeat_interval_s,
            lease_ttl_s=lease_ttl_s,
            offer_timeout_s=seconds("offer_timeout", fallback.offer_timeout_s),
            reconnect_backoff_initial_s=seconds("reconnect_backoff_initial", fallback.reconnect_backoff_initial_s),
            # A restarted control plane gives each lease it loads one TTL from the load: a
            # worker whose reconnect delay had grown past that while the control plane was
            # down would come back to leases already expired and lose its running turns.
            reconnect_backoff_max_s=min(
                seconds("reconnect_backoff_max", fallback.reconnect_backoff_max_s),
                lease_ttl_s * RECONNECT_SHARE_OF_TTL,
            ),
            max_events_per_message=response.max_events_per_message or fallback.max_events_per_message,
            # Unset means 3 heartbeat intervals of this response, not what an earlier
            # registration said.
            liveness_timeout_s=seconds("liveness_timeout", LIVENESS_FALLBACK_INTERVALS * heartbeat_interval_s),
            worker_dead_grace_s=seconds("worker_dead_grace", 0.0),
            idle_heartbeat_interval_s=max(heartbeat_interval_s, seconds("idle_heartbeat_interval", 0.0)),
            lease_digests=response.lease_digests,
            snapshot_deltas=response.snapshot_deltas,
        )


class LeaseHandler(Protocol):
    """What the Lease loop asks of the worker."""

    def held_leases(self) -> Sequence[worker_service_pb2.LeaseRef]: ...

    def known_turns(self) -> Sequence[str]: ...

    def running_turns(self) -> int: ...

    def on_lost_leases(self, lost: Sequence[worker_service_pb2.LeaseRef], why: str) -> None: ...

    async def on_lease_message(self, message: worker_service_pb2.LeaseResponse) -> None: ...

    def on_heartbeat(self) -> None: ...

    def on_disconnected(self) -> None: ...


class LeaseClient:
    """Registers and keeps one Lease stream open, forever, until `stop()`."""

    def __init__(
        self,
        *,
        stub: worker_service_pb2_grpc.WorkerServiceStub,
        settings: WorkerSettings,
        worker_id: str,
        runtimes: Sequence[str],
        handler: LeaseHandler,
        output_schema_runtimes: Sequence[str] = (),
        runtime_portability: Mapping[str, resources_pb2.RuntimePortability] | None = None,
    ) -> None:
        self._stub = stub
        self._settings = settings
        self._worker_id = worker_id
        self._runtimes = list(runtimes)
        self._output_schema_runtimes = list(output_schema_runtimes)
        self._runtime_portability = dict(runtime_portability or {})
        self._handler = handler
        self.timings = LeaseTimings(
            reconnect_backoff_initial_s=settings.reconnect_backoff_initial_s,
            reconnect_backoff_max_s=settings.reconnect_backoff_max_s,
        )
        self.registration_id = ""
        # The control plane's message size limit (RegisterResponse), for blob uploads.
        self.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._call: grpc.aio.StreamStreamCall | None = None
        self._write_lock = asyncio.Lock()
        self._stopping = False
        # When the oldest renewal the server has not answered yet (nor said anything since) was
        # sent; None when it answered them all.
        self._unanswered_since: float | None = None
        self._resync = False  # the server asked for the full list of leases
        self._renew_now = asyncio.Event()  # wakes the heartbeat early (a resync)
        # Wall-clock deadline (seconds since the epoch) announced in DrainStarted; None until
        # the worker drains. `_drain_announced_on` is the stream that carried it.
        self._drain_deadline: float | None = None
        self._drain_announced_on: grpc.aio.StreamStreamCall | None = None
        # Set once the open stream has ended (see finish()).
        self._stream_ended: asyncio.Event | None = None

    @property
    def connected(self) -> bool:
        return self._call is not None

    def new_backoff(self) -> Backoff:
        return Backoff(self.timings.reconnect_backoff_initial_s, self.timings.reconnect_backoff_max_s)

    async def send(self, request: worker_service_pb2.LeaseRequest) -> bool:
        """Write one message on the open stream; False when there is none or the write failed
        (the read side then sees the failure and the loop reconnects)."""
        call = self._call
        if call is None:
            return False
        async with self._write_lock:  # grpc.aio allows one write in flight per call
            try:
                async with asyncio.timeout(self._settings.rpc_timeout_s):
                    await call.write(request)
                return True
            except TimeoutError:
                _log.warning("lease stream write timed out; dropping the stream")
                call.cancel()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                _log.debug("lease stream write failed: %s", describe(error))
        return False

    async def finish(self) -> None:
        """Half-close the stream (the worker has said everything: a drain's releases) and wait
        for the server to end it, bounded by the RPC timeout. Closing the channel any sooner
        could cancel the call before the server handled the last releases. The loop does not
        reconnect afterwards."""
        self._stopping = True
        call, ended = self._call, self._stream_ended
        if call is None or ended is None:
            return
        async with self._write_lock:
            try:
                async with asyncio.timeout(self._settings.rpc_timeout_s):
                    await call.done_writing()
            except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return
        try:
            async with asyncio.timeout(self._settings.rpc_timeout_s):
                await ended.wait()
        except TimeoutError:
            _log.warning("the control plane did not end the lease stream within %.1fs", self._settings.rpc_timeout_s)

    def stop(self) -> None:
        """Make `run()` end at its next step (the owner cancels it too)."""
        self._stopping = True

    async def announce_drain(self, deadline: float) -> None:
        """Tell the server the worker is draining until `deadline` (seconds since the epoch):
        now on the open stream, and once on every stream opened from now on."""
        self._drain_deadline = deadline
        await self._send_drain_started()

    async def _send_drain_started(self) -> None:
        call = self._call
        if call is None or self._drain_deadline is None or self._drain_announced_on is call:
            return
        self._drain_announced_on = call
        deadline = timestamp_pb2.Timestamp()
        fraction, whole = math.modf(self._drain_deadline)
        deadline.seconds, deadline.nanos = int(whole), int(fraction * 1e9)
        request = worker_service_pb2.LeaseRequest(draining=worker_service_pb2.DrainStarted(deadline=deadline))
        if await self.send(request):
            _log.info("told the control plane this worker is draining")

    async def run(self) -> None:
        """Register, hold the stream, reconnect with jittered backoff; never gives up."""
        backoff = self.new_backoff()
        while not self._stopping:
            opened = False
            try:
                opened = await self._connect_once()
            except grpc.aio.AioRpcError as error:
                if error.code() in REJECTED_CODES:
                    raise CredentialsRejected(describe(error)) from None
                _log.warning(
                    "control plane %s: %s%s", self._settings.control_plane, describe(error), self._tls_hint(error)
                )
            except (TimeoutError, ConnectionError, OSError) as error:
                _log.warning("control plane %s: %s", self._settings.control_plane, describe(error))
            except (asyncio.CancelledError, CredentialsRejected):
                raise  # a revoked token ends the worker cleanly (the CLI says what to do), no traceback
            except Exception:
                _log.exception("lease loop failed unexpectedly; reconnecting")
            if self._stopping:
                return
            if opened:
                # A stream that was up counts as success: start the next backoff from the
                # server's current hints rather than where a past outage left it.
                backoff = self.new_backoff()
            delay = backoff.next_delay()
            _log.info("reconnecting to %s in %.2fs", self._settings.control_plane, delay)
            await asyncio.sleep(delay)

    def _tls_hint(self, error: grpc.aio.AioRpcError) -> str:
        """What to set when the failure looks like a TLS mistake (a bare "Socket closed")."""
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            return ""
        s = self._settings
        hint = tls_hint(error.details() or "", tls=bool(s.tls_ca_file), client_cert=bool(s.tls_cert_file))
        return f"; {hint}" if hint else ""

    async def _connect_once(self) -> bool:
        settings = self._settings
        response = await self._stub.Register(
            worker_service_pb2.RegisterRequest(
                worker_id=self._worker_id,
                name=settings.name,
                runtimes=self._runtimes,
                output_schema_runtimes=self._output_schema_runtimes,
                runtime_portability=self._runtime_portability,
                slots=settings.slots,
                labels=dict(settings.labels),
                version=_version(),
                features=list(FEATURES),
            ),
            timeout=settings.rpc_timeout_s,
        )
        self.timings = LeaseTimings.from_response(response, self.timings)
        self.registration_id = response.registration_id
        self.max_message_bytes = response.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
        call = self._stub.Lease()
        try:
            held = list(self._handler.held_leases())
            open_request = worker_service_pb2.LeaseRequest(
                open=worker_service_pb2.LeaseOpen(
                    worker_id=self._worker_id,
                    registration_id=self.registration_id,
                    leases=held,
                    turn_ids=list(self._handler.known_turns()),
                )
            )
            # asyncio.timeout rather than wait_for: on 3.11 wait_for can swallow a
            # cancellation that lands as the inner call completes, and then nothing stops.
            async with asyncio.timeout(settings.rpc_timeout_s):
                await call.write(open_request)
                first = await call.read()
            if first is grpc.aio.EOF:
                _log.warning("control plane closed the lease stream before opening it")
                return False
            if first.WhichOneof("kind") != "opened":
                _log.warning("lease stream: expected 'opened', got %r; reconnecting", first.WhichOneof("kind"))
                return False
            _log.info(
                "registered as %s (registration %s, heartbeat %.2fs, liveness %.2fs, %d leases held)",
                self._worker_id,
                self.registration_id,
                self.timings.heartbeat_interval_s,
                self.timings.liveness_timeout_s,
                len(held),
            )
            if first.opened.lost_leases:
                self._handler.on_lost_leases(first.opened.lost_leases, "lost while disconnected")
            self._call = call
            self._stream_ended = ended = asyncio.Event()
            self._unanswered_since = None
            self._resync = False
            tasks = [
                asyncio.create_task(self._read(call), name="lease reader"),
                asyncio.create_task(self._heartbeat(), name="lease heartbeat"),
                asyncio.create_task(self._watch_liveness(), name="lease liveness"),
            ]
            try:
                # Before anything else the worker says on this stream (the write lock orders
                # it ahead of any message queued meanwhile).
                await self._send_drain_started()
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._call = None
                for task in tasks:
                    task.cancel()
                call.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                ended.set()
                self._handler.on_disconnected()
            for result in results:
                if isinstance(result, grpc.aio.AioRpcError):
                    if result.code() in REJECTED_CODES:  # for example the token was revoked
                        raise CredentialsRejected(describe(result))
                    _log.warning("lease stream failed: %s", describe(result))
                elif isinstance(result, Exception):
                    _log.error("lease stream handler failed", exc_info=result)
            return True
        finally:
            call.cancel()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                if self._stopping:
                    _log.debug("control plane ended the lease stream after its half-close")
                else:
                    _log.warning("control plane closed the lease stream")
                return
            self._unanswered_since = None
            response = cast(worker_service_pb2.LeaseResponse, message)
            if response.WhichOneof("kind") == "renewed" and response.renewed.resync:
                _log.debug("the control plane asked for the full list of leases")
                self._resync = True
                self._renew_now.set()
            await self._handler.on_lease_message(response)

    async def _watch_liveness(self) -> None:
        """Return (which drops the stream) once a renewal has gone unanswered for the liveness
        timeout: every renewal is answered, so silence then means nobody is listening."""
        loop = asyncio.get_running_loop()
        while True:
            timeout = self.timings.liveness_timeout_s
            since = self._unanswered_since
            if since is None:
                await asyncio.sleep(min(timeout, self.timings.heartbeat_interval_s))
                continue
            silence = loop.time() - since
            if silence >= timeout:
                _log.warning(
                    "lease stream silent for %.2fs after a renewal (liveness timeout %.2fs); dropping it as deaf",
                    silence,
                    timeout,
                )
                return
            await asyncio.sleep(timeout - silence)

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        while True:
            self._renew_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timings.heartbeat_interval_s):
                    await self._renew_now.wait()
            self._handler.on_heartbeat()
            held = list(self._handler.held_leases())
            running = self._handler.running_turns()
            timings = self.timings
            # Idle (nothing held, nothing running): renew only every idle heartbeat interval.
            # The margin keeps a tick that lands a hair early from waiting one more interval.
            quiet_for = loop.time() - last_sent
            if not held and not running and quiet_for < timings.idle_heartbeat_interval_s - 0.01 and not self._resync:
                continue
            renew = worker_service_pb2.RenewLeases(running_turns=running)
            if timings.lease_digests and not self._resync:
                renew.held_digest.CopyFrom(lease_digest(held))
            else:
                renew.leases.extend(held)
            self._resync = False
            if self._unanswered_since is None:
                self._unanswered_since = loop.time()
            await self.send(worker_service_pb2.LeaseRequest(renew=renew))
            last_sent = loop.time()
