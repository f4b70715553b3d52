"""`AsyncClient`: the asyncio client of `tether.v1.SessionService` and, for operators,
`tether.v1.AdminService` (served by the control plane on the same port).

It owns one long-lived `grpc.aio` channel and puts a deadline on every unary call. Stub calls
happen only here and in the call groups it inherits (`_async_admin`: the AdminService calls;
`_async_bundles`: export and import; `_async_requests`: pending requests): `_unary` (in
`_async_boundary`) and each streaming call translate every `AioRpcError` into the SDK's
exception tree (see `sdk._errors`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2

from tether.v1 import resources_pb2
from tether.v1 import session_service_pb2 as pb

from . import _convert
from ._async_admin import AdminCalls
from ._async_bundles import BundleCalls
from ._async_requests import RequestCalls
from ._backoff import Backoff as _Backoff
from ._errors import DeadlineExceededError, translate_rpc_error
from ._models import (
    Event,
    InputPolicy,
    Session,
    SessionPage,
    SessionState,
    Snapshot,
    Turn,
    TurnPage,
)
from ._stubs import admin_stub, health_stub, session_stub
from .channel import credential_metadata, make_channel

__all__ = ["AsyncClient", "DEFAULT_TARGET", "DEFAULT_TIMEOUT_S"]

DEFAULT_TARGET = "127.0.0.1:7670"
DEFAULT_TIMEOUT_S = 10.0
#: `stream_events` reopens a stream the control plane dropped (UNAVAILABLE) after delays that
#: start at RECONNECT_INITIAL_S and double up to RECONNECT_MAX_S, jittered; it gives up once
#: the control plane has stayed unreachable for RECONNECT_GIVE_UP_S.
RECONNECT_INITIAL_S = 0.1
RECONNECT_MAX_S = 5.0
RECONNECT_GIVE_UP_S = 300.0

_log = logging.getLogger("tether.sdk")

# Only reads are retried by the channel: a retried SendInput without an idempotency key could
# store a second turn.
_RETRYABLE_READS = (
    ("tether.v1.SessionService", "GetSession"),
    ("tether.v1.SessionService", "ListSessions"),
    ("tether.v1.SessionService", "GetTurn"),
    ("tether.v1.SessionService", "GetSnapshot"),
    ("tether.v1.SessionService", "ListRequests"),
    ("tether.v1.AdminService", "ListWorkers"),
)
_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": service, "method": m} for service, m in _RETRYABLE_READS],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
)


class AsyncClient(AdminCalls, BundleCalls, RequestCalls):
    """Asyncio client of the Tether control plane.

    Use it as ``async with AsyncClient("host:7670") as client: ...`` or call `close()`, which is
    idempotent. Every unary call has a deadline: `timeout_s` per call, else the client's
    default. Pass `channel` to use a channel you own (the client then never closes it).

    Credentials: `api_key` is sent on every call; with a backend or admin key, `owner` names
    the owner the client acts for (an owner-bound key needs none). `tls_ca_file` turns on
    TLS, verifying the server against that CA; `tls_cert_file` and `tls_key_file` add a
    client certificate (mutual TLS). A control plane started with `--dev` needs none of these.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        channel: grpc.aio.Channel | None = None,
        options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
        api_key: str | None = None,
        owner: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.owner = owner
        self._owns_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else make_channel(
                target, options=options, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file, tls_key_file=tls_key_file
            )
        )
        # How this client dialled, so that a TLS mistake's bare "Socket closed" can say what to set.
        self._transport: dict[str, Any] = (
            {"tls": bool(tls_ca_file), "client_cert": bool(tls_cert_file)} if channel is None else {}
        )
        # Every SessionService and AdminService call carries the credentials; health checks none.
        self._metadata = credential_metadata(api_key, owner)
        self._stub = session_stub(self._channel)
        self._admin_stub = admin_stub(self._channel)
        self._health_stub = health_stub(self._channel)
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, grace_s: float | None = None) -> None:
        """Close the channel (when the client created it); calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._owns_channel:
            await self._channel.close(grace_s)

    # -- sessions -------------------------------------------------------------------------

    async def create_session(
        self,
        runtime: str,
        *,
        worker_selector: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Session:
        """Create an idle session whose turns run on `runtime` ("shell", "codex", ...)."""
        request = pb.CreateSessionRequest(
            runtime=runtime,
            worker_selector=dict(worker_selector or {}),
            labels=dict(labels or {}),
        )
        response = await self._unary(self._stub.CreateSession, request, timeout_s)
        return _convert.session_from_proto(response.session)

    async def get_session(self, session_id: str, *, timeout_s: float | None = None) -> Session:
        request = pb.GetSessionRequest(session_id=session_id)
        response = await self._unary(self._stub.GetSession, request, timeout_s)
        return _convert.session_from_proto(response.session)

    async def list_sessions(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: SessionState | str | None = None,
        archived: bool | None = None,
        runtime: str = "",
        labels: Mapping[str, str] | None = None,
        order_by: str = "",
        timeout_s: float | None = None,
    ) -> SessionPage:
        """One page of sessions that match every filter given: `state` (a `SessionState` or its
        name), `archived`, `runtime`, and `labels` (all of them, with equal values).

        `order_by` is "create_time desc" (the default: newest first), "create_time",
        "last_activity_time desc" or "last_activity_time". A page token continues only the
        query it came from: InvalidArgumentError (INVALID_PAGE_TOKEN) otherwise.
        """
        request = pb.ListSessionsRequest(
            page_size=page_size,
            page_token=page_token,
            state=_convert.session_state_to_proto(state),
            runtime=runtime,
            labels=dict(labels or {}),
            order_by=order_by,
        )
        if archived is not None:
            request.archived = archived
        response = await self._unary(self._stub.ListSessions, request, timeout_s)
        return SessionPage(
            sessions=[_convert.session_from_proto(s) for s in response.sessions],
            next_page_token=response.next_page_token,
        )

    async def iter_sessions(
        self,
        *,
        page_size: int = 0,
        state: SessionState | str | None = None,
        archived: bool | None = None,
        runtime: str = "",
        labels: Mapping[str, str] | None = None,
        order_by: str = "",
        timeout_s: float | None = None,
    ) -> AsyncIterator[Session]:
        """Every session that matches (see `list_sessions`), fetching pages as needed (each
        page has a deadline)."""
        page_token = ""
        while True:
            page = await self.list_sessions(
                page_size=page_size,
                page_token=page_token,
                state=state,
                archived=archived,
                runtime=runtime,
                labels=labels,
                order_by=order_by,
                timeout_s=timeout_s,
            )
            for session in page.sessions:
                yield session
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def update_session(
        self,
        session_id: str,
        *,
        title: str | None = None,
        labels: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Session:
        """Change the title (one line, at most 256 characters; "" clears it) and/or replace the
        labels; a field left None stays as it is."""
        fields = [name for name, value in (("title", title), ("labels", labels)) if value is not None]
        if not fields:
            raise ValueError("update_session: pass title, labels or both")
        request = pb.UpdateSessionRequest(
            session=resources_pb2.Session(session_id=session_id, title=title or "", labels=dict(labels or {}))
        )
        request.update_mask.paths.extend(fields)
        response = await self._unary(self._stub.UpdateSession, request, timeout_s)
        return _convert.session_from_proto(response.session)

    async def archive_session(self, session_id: str, *, timeout_s: float | None = None) -> Session:
        """Make the session read-only; archiving an archived session succeeds."""
        request = pb.ArchiveSessionRequest(session_id=session_id)
        response = await self._unary(self._stub.ArchiveSession, request, timeout_s)
        return _convert.session_from_proto(response.session)

    async def unarchive_session(self, session_id: str, *, timeout_s: float | None = None) -> Session:
        """Make an archived session writable again; unarchiving one that is not archived succeeds."""
        request = pb.UnarchiveSessionRequest(session_id=session_id)
        response = await self._unary(self._stub.UnarchiveSession, request, timeout_s)
        return _convert.session_from_proto(response.session)

    async def delete_session(
        self, session_id: str, *, delete_after_s: float | None = None, timeout_s: float | None = None
    ) -> Session | None:
        """Delete the session with its turns, events, requests and snapshots: now (returns
        None), or `delete_after_s` seconds from now (1 s to 3650 days), durably, returning the
        session with `delete_time` set. `cancel_session_deletion` stops a scheduled one."""
        request = pb.DeleteSessionRequest(session_id=session_id)
        if delete_after_s is not None:
            request.delete_after.FromNanoseconds(int(delete_after_s * 1e9))
        response = await self._unary(self._stub.DeleteSession, request, timeout_s)
        return _convert.session_from_proto(response.session) if response.HasField("session") else None

    async def cancel_session_deletion(self, session_id: str, *, timeout_s: float | None = None) -> Session:
        """Stop the session's scheduled deletion (a session with none is returned as it is)."""
        request = pb.CancelSessionDeletionRequest(session_id=session_id)
        response = await self._unary(self._stub.CancelSessionDeletion, request, timeout_s)
        return _convert.session_from_proto(response.session)

    async def restore_session(
        self,
        session_id: str,
        worker_selector: Mapping[str, str] | None = None,
        worker_id: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Session:
        """Move an idle session onto another eligible worker and rehydrate its runtime there.

        `worker_selector` adds labels the target must carry (on top of the session's own);
        `worker_id` names the target (it must differ from the current holder). Returns the
        session once the new worker holds the lease and confirmed the rehydration. Raises
        `SessionBusyError` while a turn is queued or running, `FailedPreconditionError`
        (reason NO_WORKER) when no connected worker matches, `WorkerNotConnectedError` for a
        named worker that is not connected, `RehydrationFailedError` when the target could
        not rebuild the runtime (the session is then left without a holder).
        """
        request = pb.RestoreSessionRequest(
            session_id=session_id,
            worker_selector=dict(worker_selector or {}),
            worker_id=worker_id or "",
        )
        response = await self._unary(self._stub.RestoreSession, request, timeout_s)
        return _convert.session_from_proto(response.session)

    async def fork_session(
        self, session_id: str, turn_id: str | None = None, *, timeout_s: float | None = None
    ) -> Session:
        """Copy the session's turns up to and including `turn_id` (default: its last completed
        turn), with their events, into a new session; the original is left as it is.

        The fork has a new id, the same runtime, selector and labels, and `forked_from_*` set;
        its next turn rehydrates the copied history on any eligible worker. Raises
        FailedPreconditionError (TURN_NOT_ENDED) for a turn queued or running,
        (NO_COMPLETED_TURN) when no turn is named and none completed, and NotFoundError
        (TURN_NOT_FOUND) for a turn not in the session.
        """
        request = pb.ForkSessionRequest(session_id=session_id, turn_id=turn_id or "")
        response = await self._unary(self._stub.ForkSession, request, timeout_s)
        return _convert.session_from_proto(response.session)

    async def revert_session(self, session_id: str, turn_id: str, *, timeout_s: float | None = None) -> Session:
        """Move the session's head back to the end of `turn_id`, without deleting anything: the
        later turns stay readable (`Turn.reverted`) but leave the model-visible history, and the
        next turn rehydrates the reverted history on any worker. Raises SessionBusyError while a
        turn is queued or running, FailedPreconditionError (TURN_NOT_ENDED, TURN_REVERTED) and
        NotFoundError (TURN_NOT_FOUND)."""
        request = pb.RevertSessionRequest(session_id=session_id, turn_id=turn_id)
        response = await self._unary(self._stub.RevertSession, request, timeout_s)
        return _convert.session_from_proto(response.session)

    # -- turns ----------------------------------------------------------------------------

    async def send_input(
        self,
        session_id: str,
        input: str,
        *,
        idempotency_key: str = "",
        policy: InputPolicy = InputPolicy.ENQUEUE,
        output_schema: Mapping[str, Any] | str | None = None,
        timeout_s: float | None = None,
    ) -> Turn:
        """Store a new turn; `Turn.deduplicated` says an earlier call with the key stored it.

        `policy` says what happens when a turn is queued or running already: ENQUEUE runs the
        new turn after them, REJECT raises SessionBusyError and stores nothing, INTERRUPT
        interrupts the running turn, ends the queued ones, and runs the new turn next.

        `output_schema` (a JSON Schema, as a dict or JSON text) asks for a typed result: the
        turn completes only when its final message is JSON matching it (`Turn.result`), and
        fails with the validation errors otherwise. FailedPreconditionError
        (OUTPUT_SCHEMA_UNSUPPORTED) when no connected worker's runtime can honour one.
        """
        request = pb.SendInputRequest(
            session_id=session_id,
            input=input,
            idempotency_key=idempotency_key,
            policy=cast(pb.InputPolicy, int(InputPolicy(policy))),
            output_schema=output_schema
            if isinstance(output_schema, str)
            else (json.dumps(output_schema) if output_schema is not None else ""),
        )
        response = await self._unary(self._stub.SendInput, request, timeout_s)
        return _convert.turn_from_proto(response.turn, deduplicated=response.deduplicated)

    async def get_turn(self, session_id: str, turn_id: str, *, timeout_s: float | None = None) -> Turn:
        request = pb.GetTurnRequest(session_id=session_id, turn_id=turn_id)
        response = await self._unary(self._stub.GetTurn, request, timeout_s)
        return _convert.turn_from_proto(response.turn)

    async def list_turns(
        self,
        session_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        order_by: str = "",
        timeout_s: float | None = None,
    ) -> TurnPage:
        """One page of the session's turns, each with its input, state, timings, worker, usage,
        final message or exit code, and the seq range of its events. `order_by` is
        "create_time" (the default: conversation order) or "create_time desc"."""
        request = pb.ListTurnsRequest(
            session_id=session_id, page_size=page_size, page_token=page_token, order_by=order_by
        )
        response = await self._unary(self._stub.ListTurns, request, timeout_s)
        return TurnPage(
            turns=[_convert.turn_from_proto(t) for t in response.turns], next_page_token=response.next_page_token
        )

    async def iter_turns(
        self, session_id: str, *, page_size: int = 0, order_by: str = "", timeout_s: float | None = None
    ) -> AsyncIterator[Turn]:
        """Every turn of the session (see `list_turns`), fetching pages as needed."""
        page_token = ""
        while True:
            page = await self.list_turns(
                session_id, page_size=page_size, page_token=page_token, order_by=order_by, timeout_s=timeout_s
            )
            for turn in page.turns:
                yield turn
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def interrupt_turn(
        self,
        session_id: str,
        turn_id: str = "",
        *,
        reason: str = "",
        timeout_s: float | None = None,
    ) -> Turn:
        """Stop a queued or running turn (empty `turn_id`: the session's active turn)."""
        request = pb.InterruptTurnRequest(session_id=session_id, turn_id=turn_id, reason=reason)
        response = await self._unary(self._stub.InterruptTurn, request, timeout_s)
        return _convert.turn_from_proto(response.turn)

    # -- events ---------------------------------------------------------------------------

    async def stream_events(
        self,
        session_id: str,
        *,
        after_seq: int = 0,
        stop_at_end: bool = False,
        timeout_s: float | None = None,
        reconnect: bool = True,
    ) -> AsyncGenerator[Event, None]:
        """Yield the session's events with seq > `after_seq`, then live ones as they arrive.

        The live stream has no deadline unless `timeout_s` is given; it ends when the caller
        stops iterating (``break``, cancellation, or ``aclose()``), which cancels the call, or
        after the stored events when `stop_at_end` is True.

        When the control plane goes away (a restart, a deploy, a dropped connection: the call
        fails UNAVAILABLE), the stream reopens by itself after the last event it yielded, with
        jittered backoff (0.1 s doubling to 5 s), so the caller sees every event once, in
        order. It gives up, raising `UnavailableError`, once the control plane has stayed
        unreachable for `RECONNECT_GIVE_UP_S` (or past `timeout_s`). `reconnect=False` raises
        at the first failure instead.
        """
        if self._closed:
            raise RuntimeError("AsyncClient is closed")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_seq = after_seq
        backoff = _Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)
        # Only a stream that was once open is reopened: a first call that cannot connect (a
        # wrong address, a TLS mismatch) fails at once, as any other call would.
        established = False
        down_since: float | None = None
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            request = pb.StreamSessionEventsRequest(session_id=session_id, after_seq=last_seq, stop_at_end=stop_at_end)
            call = self._stub.StreamSessionEvents(request, timeout=remaining, metadata=self._metadata)
            opened_at = time.monotonic()
            try:
                await call.wait_for_connection()
                established = True
                async for response in call:
                    down_since = None
                    backoff.reset()
                    for event in response.events:
                        if event.seq <= last_seq:
                            continue  # a replay overlapping what was yielded: never twice
                        last_seq = event.seq
                        yield _convert.event_from_proto(event)
                return
            except grpc.aio.AioRpcError as exc:
                error = translate_rpc_error(exc, **self._transport)
                if not (reconnect and established and exc.code() == grpc.StatusCode.UNAVAILABLE) or self._closed:
                    raise error from exc
                now = time.monotonic()
                if now - opened_at > RECONNECT_MAX_S:  # the stream was up (if quiet) until now
                    down_since = None
                    backoff.reset()
                down_since = now if down_since is None else down_since
                delay = backoff.next_delay()
                if now + delay - down_since > RECONNECT_GIVE_UP_S or (deadline is not None and now + delay >= deadline):
                    raise error from exc
                _log.warning(
                    "event stream of %s lost (%s); reopening after seq %d in %.1fs", session_id, error, last_seq, delay
                )
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            if self._closed:  # closed while waiting to reopen: the outage is the answer
                raise error

    async def wait_for_turn(
        self,
        session_id: str,
        turn_id: str,
        *,
        after_seq: int = 0,
        timeout_s: float | None = None,
    ) -> Turn:
        """Wait until the turn ends (completed, failed or interrupted) and return it.

        `timeout_s` bounds the whole wait (None: no bound) and raises DeadlineExceededError.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(
                    f"turn {turn_id} did not end within {timeout_s}s",
                    code=grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            return left

        def unary_timeout() -> float | None:
            return _min(remaining(), self.timeout_s)

        # The turn may have ended before `after_seq`; then no terminal event would come.
        turn = await self.get_turn(session_id, turn_id, timeout_s=unary_timeout())
        if turn.is_terminal:
            return turn
        # The turn's own events start at its first_seq: nothing before it needs reading (and a
        # log compacted by retention no longer serves what is older).
        start = max(after_seq, turn.first_seq - 1) if turn.first_seq else after_seq
        events = self.stream_events(session_id, after_seq=start, timeout_s=remaining())
        try:
            async for event in events:
                if event.turn_id == turn_id and event.is_terminal:
                    break
        finally:
            await events.aclose()
        return await self.get_turn(session_id, turn_id, timeout_s=unary_timeout())

    # -- snapshots ------------------------------------------------------------------------

    async def get_snapshot(self, session_id: str, *, timeout_s: float | None = None) -> Snapshot:
        """The session's latest snapshot (NotFoundError, reason SNAPSHOT_NOT_FOUND, if none)."""
        request = pb.GetSnapshotRequest(session_id=session_id)
        response = await self._unary(self._stub.GetSnapshot, request, timeout_s)
        return _convert.snapshot_from_proto(response.snapshot)

    async def create_snapshot(self, session_id: str, *, timeout_s: float | None = None) -> Snapshot:
        """Ask the worker holding the session for a snapshot, store it and return it."""
        request = pb.CreateSnapshotRequest(session_id=session_id)
        response = await self._unary(self._stub.CreateSnapshot, request, timeout_s)
        return _convert.snapshot_from_proto(response.snapshot)

    # -- health ---------------------------------------------------------------------------

    async def health(self, service: str = "", *, timeout_s: float | None = None) -> bool:
        """True when the server's gRPC health service reports SERVING for `service`."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary(self._health_stub.Check, request, timeout_s, authenticated=False)
        return response.status == health_pb2.HealthCheckResponse.SERVING


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
