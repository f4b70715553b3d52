"""The Forwarder relays calls, byte for byte, from one replica to the one that serves them.

The relay is a second `grpc.aio.server` on port 0 whose only content is the Forwarder
interceptor: grpc.aio runs interceptors before it resolves a method, so a server with no
handlers still relays every call (it answers UNIMPLEMENTED "Method not found!" for what it
serves locally). The main `relay` fixture also registers servicers of its own with
`add_*Servicer_to_server` (registered methods, which grpc.aio resolves before generic
handlers) whose every method records the call and answers UNIMPLEMENTED `LOCAL_ANSWER`:
the interceptor still sees every call first, and a call that reaches them was served
locally instead of relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.helpers.certs import CertificateAuthority
from tests.helpers.processes import eventually, start_worker
from tether import sdk
from tether.control_plane import ControlPlane
from tether.control_plane.api._forward import FORWARDED_BY, FORWARDED_FOR, Forwarder
from tether.sdk._errors import translate_rpc_error
from tether.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

MAX_MESSAGE_BYTES = 256 * 1024
CALL_TIMEOUT_S = 10.0


LOCAL_ANSWER = "answered by the relay replica itself"
_LOCAL_SERVICES = (
    (session_service_pb2, session_service_pb2_grpc, "SessionService"),
    (worker_service_pb2, worker_service_pb2_grpc, "WorkerService"),
    (admin_service_pb2, admin_service_pb2_grpc, "AdminService"),
)


def _size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes)]


class Relay:
    def __init__(self, target: str, forwarder: Forwarder) -> None:
        self.target = target
        self.forwarder = forwarder
        self.routed: list[str] = []  # every method `route` was asked about, in order
        self.served_locally: list[str] = []  # every method the relay's own servicers answered


def _add_local_servicers(server: grpc.aio.Server, served_locally: list[str]) -> None:
    for pb2, pb2_grpc, name in _LOCAL_SERVICES:
        service = pb2.DESCRIPTOR.services_by_name[name]

        def answering(path: str):
            # One coroutine fits every shape: it ends the call before reading or writing.
            async def answer(self, request_or_requests, context: grpc.aio.ServicerContext) -> None:
                served_locally.append(path)
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, LOCAL_ANSWER)

            return answer

        base = getattr(pb2_grpc, f"{name}Servicer")
        servicer = type(
            f"Local{name}", (base,), {m.name: answering(f"/{service.full_name}/{m.name}") for m in service.methods}
        )
        getattr(pb2_grpc, f"add_{name}Servicer_to_server")(servicer(), server)


@contextlib.asynccontextmanager
async def serve_relay(
    route_to: Callable[[], str],
    replica_id: str = "relay-1",
    *,
    local_servicers: bool = False,
    credentials: grpc.ChannelCredentials | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> AsyncIterator[Relay]:
    """A replica that relays every tether.v1 call to `route_to()`."""

    def route(method: str) -> str:
        relay.routed.append(method)
        return route_to()

    forwarder = Forwarder(route, replica_id=replica_id, max_message_bytes=max_message_bytes, credentials=credentials)
    server = grpc.aio.server(interceptors=[forwarder], options=_size_options(max_message_bytes))
    port = server.add_insecure_port("127.0.0.1:0")
    relay = Relay(f"127.0.0.1:{port}", forwarder)
    if local_servicers:
        _add_local_servicers(server, relay.served_locally)
    await server.start()
    try:
        yield relay
    finally:
        await server.stop(None)
        await forwarder.close()


@pytest.fixture
async def relay(control_plane: ControlPlane) -> AsyncIterator[Relay]:
    async with serve_relay(lambda: f"127.0.0.1:{control_plane.port}", local_servicers=True) as r:
        yield r
    assert r.served_locally == []  # every call went to the control plane


def _subscribers(cp: ControlPlane, session_id: str) -> int:
    """Live StreamSessionEvents calls on the control plane for the session: each one that is
    caught up waits on the session's wake-up event."""
    return len(cp.hub._sessions.get(session_id).log.changed._waiters or ())


def _raw(channel: grpc.aio.Channel, kind: str, method: str):
    return getattr(channel, kind)(method)  # no serializers: bytes in, bytes out


# -- 1. unary calls and their errors ------------------------------------------------------


async def test_unary_calls_and_error_reasons_pass_through(control_plane: ControlPlane, relay: Relay) -> None:
    async with sdk.AsyncClient(relay.target, timeout_s=CALL_TIMEOUT_S) as client:
        s = await client.create_session("shell", labels={"via": "relay"})
        assert [x.session_id for x in (await client.list_sessions()).sessions] == [s.session_id]
        got = await client.get_session(s.session_id)
        assert (got.session_id, got.labels) == (s.session_id, {"via": "relay"})
        with pytest.raises(sdk.NotFoundError) as missing:
            await client.get_session("ses_missing")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND and missing.value.reason == "SESSION_NOT_FOUND"
        assert missing.value.metadata == {"session_id": "ses_missing"}
        with pytest.raises(sdk.InvalidArgumentError) as bad:
            await client.create_session("")
        assert bad.value.reason == "INVALID_ARGUMENT" and bad.value.field_violations
    # It was the control plane that stored the session, not the relay.
    async with sdk.AsyncClient(f"127.0.0.1:{control_plane.port}") as direct:
        assert (await direct.get_session(s.session_id)).labels == {"via": "relay"}
    assert relay.routed[:3] == [
        "/tether.v1.SessionService/CreateSession",
        "/tether.v1.SessionService/ListSessions",
        "/tether.v1.SessionService/GetSession",
    ]


async def test_credentials_and_owner_reach_the_serving_replica(control_plane: ControlPlane, relay: Relay) -> None:
    alice_key = await control_plane.create_api_key("owner", "alice")
    backend_key = await control_plane.create_api_key("backend", name="host app")
    async with (
        sdk.AsyncClient(relay.target, api_key=backend_key, owner="alice") as backend_for_alice,
        sdk.AsyncClient(relay.target, api_key=alice_key) as alice,
        sdk.AsyncClient(relay.target) as dev,
        sdk.AsyncClient(relay.target, api_key="tk_not_a_key") as stranger,
    ):
        s = await backend_for_alice.create_session("shell")  # authorization and x-tether-owner
        assert s.session_id in [x.session_id for x in (await alice.list_sessions()).sessions]
        assert (await dev.list_sessions()).sessions == []  # --dev callers act as owner "local"
        with pytest.raises(sdk.UnauthenticatedError):
            await stranger.list_sessions()


# -- 2. a real worker and a subscriber, through the relay ---------------------------------

COMMAND = "for i in 1 2 3; do echo out-$i; done; echo oops >&2; exit 3"


async def test_worker_runs_a_turn_through_the_relay(
    control_plane: ControlPlane, relay: Relay, procs, tmp_path: pathlib.Path
) -> None:
    worker = start_worker(procs, relay.target, tmp_path / "w1", "w1")
    async with sdk.AsyncClient(relay.target, timeout_s=CALL_TIMEOUT_S) as client:
        await eventually(lambda: _has_worker(client), what="the worker to register through the relay")
        s = await client.create_session("shell")

        async def follow() -> list[sdk.Event]:
            seen = []
            async for e in client.stream_events(s.session_id):
                seen.append(e)
                if e.is_terminal:
                    return seen
            return seen

        subscriber = asyncio.create_task(follow())
        turn = await client.send_input(s.session_id, COMMAND)
        done = await client.wait_for_turn(s.session_id, turn.turn_id, timeout_s=20)
        assert done.state == sdk.TurnState.COMPLETED and done.exit_code == 3
        seen = await asyncio.wait_for(subscriber, 10)
        snap = await client.create_snapshot(s.session_id)  # the worker answers on a client stream
    async with sdk.AsyncClient(f"127.0.0.1:{control_plane.port}") as direct:
        stored = [e async for e in direct.stream_events(s.session_id, stop_at_end=True)]
    assert [(e.seq, e.kind, e.text) for e in seen] == [(e.seq, e.kind, e.text) for e in stored]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert "".join(e.text for e in seen if e.stream == "stdout") == "out-1\nout-2\nout-3\n"
    assert [(h.role.name, h.text) for h in snap.history] == [
        ("INPUT", COMMAND),
        ("OUTPUT", "out-1\nout-2\nout-3\noops\n"),
    ]
    for method in ("Register", "Lease", "StreamWorkerEvents", "Snapshot"):
        assert f"/tether.v1.WorkerService/{method}" in relay.routed
    # Its drain goes through the relay, which runs on this event loop: stop it while the loop
    # still serves (the `procs` fixture's own stop would block the loop until its timeout).
    assert await asyncio.to_thread(worker.stop) == 0


async def _has_worker(client: sdk.AsyncClient) -> bool:
    return any(w.connected for w in await client.list_workers())


# -- 3. deadlines and cancellation --------------------------------------------------------


async def test_deadline_ends_a_relayed_wait(control_plane: ControlPlane, relay: Relay) -> None:
    async with sdk.AsyncClient(relay.target, timeout_s=CALL_TIMEOUT_S) as client:
        s = await client.create_session("shell")  # no turns, so no events: the stream waits
        with pytest.raises(sdk.DeadlineExceededError):
            async for _ in client.stream_events(s.session_id, timeout_s=0.3):
                pass
    await eventually(lambda: _subscribers(control_plane, s.session_id) == 0, 5, "the upstream stream to end")


async def test_cancelling_a_relayed_subscription_closes_the_upstream_stream(
    control_plane: ControlPlane, relay: Relay
) -> None:
    async with sdk.AsyncClient(relay.target, timeout_s=CALL_TIMEOUT_S) as client:
        s = await client.create_session("shell")

        async def follow() -> None:
            async for _ in client.stream_events(s.session_id):
                pass

        followers = [asyncio.create_task(follow()) for _ in range(3)]
        await eventually(lambda: _subscribers(control_plane, s.session_id) == 3, 5, "three upstream subscriptions")
        followers[0].cancel()
        await eventually(
            lambda: _subscribers(control_plane, s.session_id) == 2, 5, "the cancelled one to close upstream"
        )
        for f in followers[1:]:
            f.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        await eventually(
            lambda: _subscribers(control_plane, s.session_id) == 0, 5, "every upstream subscription to close"
        )


async def test_many_cancelled_streams_leave_no_tasks(control_plane: ControlPlane, relay: Relay) -> None:
    async with sdk.AsyncClient(relay.target, timeout_s=CALL_TIMEOUT_S) as client:
        s = await client.create_session("shell")
    baseline = asyncio.all_tasks()
    calls = []
    async with grpc.aio.insecure_channel(relay.target) as channel:
        for _ in range(20):  # bidi, with a pump each
            calls.append(_raw(channel, "stream_stream", "/tether.v1.WorkerService/Lease")(timeout=CALL_TIMEOUT_S))
        for _ in range(20):  # server streams
            request = _stream_events_request(s.session_id)
            calls.append(
                _raw(channel, "unary_stream", "/tether.v1.SessionService/StreamSessionEvents")(
                    request, timeout=CALL_TIMEOUT_S
                )
            )
        await eventually(lambda: len(_pumps()) == 20, 5, "20 relayed Lease streams")
        await eventually(lambda: _subscribers(control_plane, s.session_id) == 20, 5, "20 relayed subscriptions")
        for call in calls:
            call.cancel()
        await eventually(
            lambda: not _pumps() and _subscribers(control_plane, s.session_id) == 0, 5, "the relayed streams to end"
        )
    await relay.forwarder.close()
    await relay.forwarder.close()  # idempotent
    await eventually(lambda: not _new_tasks(baseline), 5, "no task left behind")


def _new_tasks(baseline: set[asyncio.Task]) -> list[str]:
    """Tasks started since `baseline` and still running, except each server's standing
    accept tasks (grpc.aio re-arms one per registered method, and one generic, per call)."""
    return [
        t.get_name()
        for t in asyncio.all_tasks() - baseline - {asyncio.current_task()}
        if not getattr(t.get_coro(), "__qualname__", "").startswith("AioServer._request")
    ]


async def test_upstream_ending_a_bidi_stream_ends_the_callers(control_plane: ControlPlane, relay: Relay) -> None:
    async with grpc.aio.insecure_channel(relay.target) as channel:
        lease = _raw(channel, "stream_stream", "/tether.v1.WorkerService/Lease")(timeout=CALL_TIMEOUT_S)
        await lease.write(b"\xff\xff not a LeaseRequest")  # and the caller never half-closes
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lease.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert translate_rpc_error(err.value).field_violations[0][0] == "request"
    await eventually(lambda: not _pumps(), 5, "the relay to stop reading the caller's stream")


def _pumps() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("forward requests ")]


def _stream_events_request(session_id: str) -> bytes:
    return session_service_pb2.StreamSessionEventsRequest(session_id=session_id).SerializeToString()


# -- 4. the serving replica is down ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_replica_is_unavailable_naming_it() -> None:
    down = f"127.0.0.1:{_free_port()}"
    async with serve_relay(lambda: down) as relay, sdk.AsyncClient(relay.target, timeout_s=CALL_TIMEOUT_S) as client:
        with pytest.raises(sdk.UnavailableError) as unary:
            await client.create_session("shell")
        with pytest.raises(sdk.UnavailableError) as stream:
            async for _ in client.stream_events("ses_x", timeout_s=CALL_TIMEOUT_S):
                pass
    for err in (unary.value, stream.value):
        assert err.code == grpc.StatusCode.UNAVAILABLE
        assert err.message.startswith(f"replica {down} that serves this call is unreachable: ")
        assert err.message.endswith("; retry")


# -- 5. a relayed call is never relayed again -------------------------------------------------


async def test_an_already_forwarded_call_is_served_locally() -> None:
    async with (
        serve_relay(lambda: "127.0.0.1:1", local_servicers=True) as relay,
        grpc.aio.insecure_channel(relay.target) as channel,
    ):
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as local:
            await stub.GetSession(
                session_service_pb2.GetSessionRequest(session_id="ses_x"),
                metadata=((FORWARDED_BY, "elsewhere"),),
                timeout=CALL_TIMEOUT_S,
            )
    # The relay's own servicer answered; the route was never asked.
    assert (local.value.code(), local.value.details()) == (grpc.StatusCode.UNIMPLEMENTED, LOCAL_ANSWER)
    assert (relay.routed, relay.served_locally) == ([], ["/tether.v1.SessionService/GetSession"])


async def test_replicas_with_crossed_routes_relay_a_call_once() -> None:
    """A routes everything to B and B to A (stale views): the call stops at B."""
    targets: dict[str, str] = {}
    async with (
        serve_relay(lambda: targets["b"], "replica-a") as a,
        serve_relay(lambda: targets["a"], "replica-b") as b,
    ):
        targets.update(a=a.target, b=b.target)
        async with sdk.AsyncClient(a.target, timeout_s=CALL_TIMEOUT_S) as client:
            with pytest.raises(sdk.UnimplementedError) as err:
                await client.create_session("shell")
    assert err.value.message == "Method not found!"  # B has no handlers: it served it "locally"
    assert (a.routed, b.routed) == (["/tether.v1.SessionService/CreateSession"], [])


# -- what the serving replica receives, and what comes back ---------------------------------


class EchoReplica:
    """A stand-in for the serving replica (the forwarder's upstream seam): it records what
    each call carried and answers with the bytes it got, in each of the four shapes."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.cancelled: list[str] = []  # one entry per call that ended by cancellation

    def _record(self, context: grpc.aio.ServicerContext) -> None:
        self.calls.append({"metadata": list(context.invocation_metadata()), "time_remaining": context.time_remaining()})

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._record(context)
        await context.send_initial_metadata((("x-upstream-header", "h"),))
        if request == b"fail":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "echo refused", trailing_metadata=FAILURE_TRAILERS)
        context.set_trailing_metadata((("x-upstream-trailer", "t"),))
        return request

    async def server_stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._record(context)
        for i in range(3):
            yield request + b"-%d" % i

    async def client_stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        self._record(context)
        return b"|".join([r async for r in requests])

    async def bidi(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._record(context)
        async for r in requests:
            yield r.upper()

    async def bidi_held_open(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Echoes, and stays open after the caller half-closes: only a cancel ends it."""
        self._record(context)
        try:
            async for r in requests:
                yield r
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(context.peer())
            raise

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        return grpc.method_handlers_generic_handler(
            "tether.v1.SessionService",
            {
                "GetSession": grpc.unary_unary_rpc_method_handler(self.unary),
                "StreamSessionEvents": grpc.unary_stream_rpc_method_handler(self.server_stream),
            },
        ), grpc.method_handlers_generic_handler(
            "tether.v1.WorkerService",
            {
                "Snapshot": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Lease": grpc.stream_stream_rpc_method_handler(self.bidi),
                "StreamEvents": grpc.stream_stream_rpc_method_handler(self.bidi_held_open),
            },
        )


def _status_details() -> bytes:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="ECHO_REFUSED", domain="tether.dev", metadata={"k": "v"}))
    return status_pb2.Status(code=9, message="echo refused", details=[info]).SerializeToString()


FAILURE_TRAILERS = (("grpc-status-details-bin", _status_details()), ("x-upstream-trailer", "failed"))


@contextlib.asynccontextmanager
async def serve_echo(
    credentials: grpc.ServerCredentials | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> AsyncIterator[tuple[EchoReplica, str]]:
    echo = EchoReplica()
    server = grpc.aio.server(options=_size_options(max_message_bytes))
    server.add_generic_rpc_handlers(echo.handlers())
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield echo, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def echo_relay() -> AsyncIterator[tuple[EchoReplica, Relay]]:
    async with serve_echo() as (echo, target), serve_relay(lambda: target) as relay:
        yield echo, relay


async def test_bytes_metadata_and_deadline_reach_the_serving_replica(echo_relay) -> None:
    echo, relay = echo_relay
    body = b"\x00not a protobuf message\xff"  # the relay never decodes it
    sent = (
        ("authorization", "Bearer secret"),
        ("x-tether-owner", "alice"),
        ("x-blob-bin", b"\x00\x01\x02"),
        (FORWARDED_FOR, "spoofed"),
    )
    async with grpc.aio.insecure_channel(
        relay.target, options=[("grpc.primary_user_agent", "caller-agent")]
    ) as channel:
        call = _raw(channel, "unary_unary", "/tether.v1.SessionService/GetSession")(body, metadata=sent, timeout=5)
        assert await call == body
        assert ("x-upstream-header", "h") in list(await call.initial_metadata())
        assert ("x-upstream-trailer", "t") in list(await call.trailing_metadata())
    (seen,) = echo.calls
    md = seen["metadata"]
    keys = [k for k, _ in md]
    assert ("authorization", "Bearer secret") in md and ("x-tether-owner", "alice") in md
    assert ("x-blob-bin", b"\x00\x01\x02") in md
    assert (FORWARDED_BY, "relay-1") in md
    forwarded_for = [v for k, v in md if k == FORWARDED_FOR]
    assert len(forwarded_for) == 1 and forwarded_for[0].startswith("ipv4:127.0.0.1:")  # the relay's view, not "spoofed"
    assert "caller-agent" not in dict(md).get("user-agent", "")  # the relay's own hop headers
    assert not [k for k in keys if k.startswith(":") or k in ("te", "content-type")]
    # The caller's deadline, less the time spent on the way (grpc-timeout rounds to a few ms).
    assert seen["time_remaining"] is not None and 3.0 < seen["time_remaining"] < 5.1


async def test_status_details_and_trailers_come_back_exactly(echo_relay) -> None:
    _, relay = echo_relay
    async with grpc.aio.insecure_channel(relay.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _raw(channel, "unary_unary", "/tether.v1.SessionService/GetSession")(b"fail", timeout=5)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "echo refused")
    assert [tuple(m) for m in err.value.trailing_metadata()] == list(FAILURE_TRAILERS)
    # The SDK reads the reason out of the relayed google.rpc.Status.
    translated = translate_rpc_error(err.value)
    assert (translated.reason, translated.metadata) == ("ECHO_REFUSED", {"k": "v"})


async def test_each_stream_shape_is_relayed(echo_relay) -> None:
    echo, relay = echo_relay
    async with grpc.aio.insecure_channel(relay.target) as channel:
        server_stream = _raw(channel, "unary_stream", "/tether.v1.SessionService/StreamSessionEvents")(b"m", timeout=5)
        assert [m async for m in server_stream] == [b"m-0", b"m-1", b"m-2"]

        async def parts() -> AsyncIterator[bytes]:
            for p in (b"a", b"b", b"c"):
                yield p

        assert await _raw(channel, "stream_unary", "/tether.v1.WorkerService/Snapshot")(parts(), timeout=5) == b"a|b|c"
        # Ping-pong on one bidi stream: each answer must arrive before the next request is sent,
        # so requests and responses flow at the same time.
        bidi = _raw(channel, "stream_stream", "/tether.v1.WorkerService/Lease")(timeout=5)
        for word in (b"one", b"two", b"three"):
            await bidi.write(word)
            assert await bidi.read() == word.upper()
        await bidi.done_writing()
        assert await bidi.read() is grpc.aio.EOF
        assert await bidi.code() == grpc.StatusCode.OK
    assert len(echo.calls) == 3


async def test_cancelling_a_relayed_bidi_stream_cancels_the_upstream_call(echo_relay) -> None:
    echo, relay = echo_relay
    async with grpc.aio.insecure_channel(relay.target) as channel:
        calls = [
            _raw(channel, "stream_stream", "/tether.v1.WorkerService/StreamEvents")(timeout=CALL_TIMEOUT_S)
            for _ in range(5)
        ]
        for call in calls:
            await call.write(b"x")
            assert await call.read() == b"x"
        await calls[0].done_writing()  # half-closed: the upstream keeps it open
        for call in calls:
            call.cancel()
        await eventually(lambda: len(echo.cancelled) == 5 and not _pumps(), 5, "every upstream call to be cancelled")


async def test_replicas_talk_mutual_tls_when_given_credentials(tmp_path: pathlib.Path) -> None:
    ca = CertificateAuthority(tmp_path / "certs", "replica-ca")
    server_cert, relay_cert = ca.issue_server(), ca.issue_client("relay-1")
    upstream_tls = grpc.ssl_server_credentials(
        [(server_cert.key_file.read_bytes(), server_cert.cert_file.read_bytes())],
        root_certificates=ca.cert_file.read_bytes(),
        require_client_auth=True,
    )
    relay_tls = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_file.read_bytes(),
        private_key=relay_cert.key_file.read_bytes(),
        certificate_chain=relay_cert.cert_file.read_bytes(),
    )
    get = "/tether.v1.SessionService/GetSession"
    async with serve_echo(upstream_tls) as (echo, target):
        async with (
            serve_relay(lambda: target, credentials=relay_tls) as relay,
            grpc.aio.insecure_channel(relay.target) as channel,
        ):
            assert await _raw(channel, "unary_unary", get)(b"over tls", timeout=CALL_TIMEOUT_S) == b"over tls"
        # Without credentials the relay cannot complete the handshake: the replica is unreachable.
        async with serve_relay(lambda: target) as relay, grpc.aio.insecure_channel(relay.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _raw(channel, "unary_unary", get)(b"plaintext", timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and f"replica {target} " in err.value.details()
    assert len(echo.calls) == 1


async def test_the_relay_channel_takes_the_servers_message_size_limit() -> None:
    big = 8 * 1024 * 1024  # twice gRPC's default receive limit, which a default channel would keep
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    async with (
        serve_echo(max_message_bytes=big) as (_, target),
        serve_relay(lambda: target, max_message_bytes=big) as relay,
        grpc.aio.insecure_channel(relay.target, options=_size_options(big)) as channel,
    ):
        assert (
            await _raw(channel, "unary_unary", "/tether.v1.SessionService/GetSession")(body, timeout=CALL_TIMEOUT_S)
            == body
        )
