"""Unit tests of the SDK that need no control plane.

Error translation and conversion are tested on constructed values; the clients and the CLI are
tested against a small in-process fake `SessionService` on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import datetime, timezone

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from tether.v1 import resources_pb2, session_service_pb2, session_service_pb2_grpc

import sdk
from sdk import _convert
from sdk._errors import translate_rpc_error
from sdk.cli import session as session_cli

# -- helpers ----------------------------------------------------------------------------


def _rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] = (),
) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        info = error_details_pb2.ErrorInfo(
            reason=reason, domain="tether.dev", metadata=metadata or {}
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    return status


def _rpc_error(code: grpc.StatusCode, message: str, **kwargs) -> grpc.aio.AioRpcError:
    status = _rich_status(code, message, **kwargs)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=500_000_000)


def _event(seq: int, turn_id: str = "trn_1", **body) -> resources_pb2.Event:
    return resources_pb2.Event(
        session_id="ses_1",
        seq=seq,
        turn_id=turn_id,
        create_time=_ts(1_700_000_000 + seq),
        body=resources_pb2.EventBody(**body),
    )


# -- errors -----------------------------------------------------------------------------


def test_not_found_carries_reason_message_and_metadata():
    err = translate_rpc_error(
        _rpc_error(
            grpc.StatusCode.NOT_FOUND,
            "session ses_x not found",
            reason="SESSION_NOT_FOUND",
            metadata={"session_id": "ses_x"},
        )
    )
    assert type(err) is sdk.NotFoundError
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.reason == "SESSION_NOT_FOUND"
    assert err.message == "session ses_x not found"
    assert err.metadata == {"session_id": "ses_x"}
    assert str(err) == "session ses_x not found (SESSION_NOT_FOUND)"


def test_invalid_argument_carries_field_violations():
    err = translate_rpc_error(
        _rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "runtime is required",
            reason="INVALID_ARGUMENT",
            violations=[("runtime", "must not be empty")],
        )
    )
    assert isinstance(err, sdk.InvalidArgumentError)
    assert err.field_violations == [("runtime", "must not be empty")]
    assert "runtime: must not be empty" in str(err)


def test_lease_lost_is_chosen_by_reason():
    err = translate_rpc_error(
        _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "epoch 3 is stale", reason="LEASE_LOST")
    )
    assert type(err) is sdk.LeaseLostError
    assert isinstance(err, sdk.FailedPreconditionError)

    other = translate_rpc_error(
        _rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION, "archived", reason="SESSION_ARCHIVED"
        )
    )
    assert type(other) is sdk.FailedPreconditionError


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, sdk.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, sdk.NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, sdk.AlreadyExistsError),
        (grpc.StatusCode.FAILED_PRECONDITION, sdk.FailedPreconditionError),
        (grpc.StatusCode.OUT_OF_RANGE, sdk.OutOfRangeError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, sdk.ResourceExhaustedError),
        (grpc.StatusCode.UNAUTHENTICATED, sdk.UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, sdk.PermissionDeniedError),
        (grpc.StatusCode.UNAVAILABLE, sdk.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, sdk.DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, sdk.RequestCancelledError),
        (grpc.StatusCode.UNIMPLEMENTED, sdk.UnimplementedError),
        (grpc.StatusCode.INTERNAL, sdk.InternalError),
        (grpc.StatusCode.UNKNOWN, sdk.InternalError),
    ],
)
def test_each_status_code_maps_to_its_class(code, cls):
    err = translate_rpc_error(_rpc_error(code, "boom"))
    assert type(err) is cls
    assert isinstance(err, sdk.TetherError)
    assert err.reason == ""


def test_error_without_rich_status_keeps_grpc_details():
    plain = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
    )
    err = translate_rpc_error(plain)
    assert type(err) is sdk.UnavailableError
    assert str(err) == "down"


def test_malformed_status_details_do_not_hide_the_error():
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00garbage"))
    err = translate_rpc_error(
        grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailing, details="oops"
        )
    )
    assert type(err) is sdk.InternalError
    assert err.message == "oops"


# -- conversion -------------------------------------------------------------------------


def test_enums_equal_proto_numbers():
    for member in sdk.SessionState:
        assert resources_pb2.SessionState.Value(f"SESSION_STATE_{member.name}") == member
    for member in sdk.TurnState:
        assert resources_pb2.TurnState.Value(f"TURN_STATE_{member.name}") == member
    for member in sdk.HistoryItemRole:
        assert resources_pb2.HistoryItemRole.Value(f"HISTORY_ITEM_ROLE_{member.name}") == member
    assert len(sdk.SessionState) == len(resources_pb2.SessionState.keys())
    assert len(sdk.TurnState) == len(resources_pb2.TurnState.keys())


def test_unknown_enum_value_becomes_unspecified():
    turn = _convert.turn_from_proto(resources_pb2.Turn(turn_id="trn_1", state=99))
    assert turn.state is sdk.TurnState.UNSPECIFIED


def test_session_state_to_proto_accepts_names():
    assert _convert.session_state_to_proto("idle") == resources_pb2.SESSION_STATE_IDLE
    assert _convert.session_state_to_proto(sdk.SessionState.ARCHIVED) == 3
    assert _convert.session_state_to_proto(None) == 0


def test_session_conversion():
    msg = resources_pb2.Session(
        session_id="ses_1",
        runtime="shell",
        worker_selector={"pool": "a"},
        labels={"team": "x"},
        state=resources_pb2.SESSION_STATE_ACTIVE,
        create_time=_ts(1_700_000_000),
        last_seq=7,
        active_turn_id="trn_1",
        lease_epoch=2,
        turn_count=3,
    )
    s = _convert.session_from_proto(msg)
    assert s.state is sdk.SessionState.ACTIVE
    assert s.labels == {"team": "x"} and s.worker_selector == {"pool": "a"}
    assert s.create_time == datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=timezone.utc)
    assert s.update_time is None
    assert (s.last_seq, s.lease_epoch, s.turn_count) == (7, 2, 3)
    assert s.raw is msg


def test_turn_conversion_and_dedup_flag():
    msg = resources_pb2.Turn(
        turn_id="trn_1",
        session_id="ses_1",
        input="echo hi",
        state=resources_pb2.TURN_STATE_COMPLETED,
        create_time=_ts(1),
        end_time=_ts(2),
        exit_code=3,
    )
    turn = _convert.turn_from_proto(msg, deduplicated=True)
    assert turn.state is sdk.TurnState.COMPLETED and turn.is_terminal
    assert turn.deduplicated and turn.exit_code == 3
    assert turn.end_time is not None and turn.end_time.tzinfo is timezone.utc
    running = _convert.turn_from_proto(
        resources_pb2.Turn(turn_id="trn_2", state=resources_pb2.TURN_STATE_RUNNING)
    )
    assert not running.is_terminal and running.end_time is None and not running.deduplicated


@pytest.mark.parametrize(
    ("body", "kind", "expected", "terminal"),
    [
        (
            {"input_received": resources_pb2.InputReceived(input="ls")},
            "input_received",
            {"input": "ls"},
            False,
        ),
        (
            {"turn_started": resources_pb2.TurnStarted(worker_id="w1", runtime_thread_id="t")},
            "turn_started",
            {"worker_id": "w1", "runtime_thread_id": "t"},
            False,
        ),
        (
            {
                "output": resources_pb2.OutputChunk(
                    stream=resources_pb2.OUTPUT_STREAM_STDERR, text="oops\n"
                )
            },
            "output",
            {"text": "oops\n", "stream": "stderr"},
            False,
        ),
        (
            {"output": resources_pb2.OutputChunk(stream=resources_pb2.OUTPUT_STREAM_STDOUT)},
            "output",
            {"text": "", "stream": "stdout"},
            False,
        ),
        (
            {"turn_completed": resources_pb2.TurnCompleted(exit_code=4)},
            "turn_completed",
            {"exit_code": 4},
            True,
        ),
        (
            {"turn_failed": resources_pb2.TurnFailed(error_message="no shell")},
            "turn_failed",
            {"error_message": "no shell"},
            True,
        ),
        (
            {"turn_interrupted": resources_pb2.TurnInterrupted(reason="by request")},
            "turn_interrupted",
            {"reason": "by request"},
            True,
        ),
        (
            {"runtime": resources_pb2.RuntimeEvent(name="item/started", json="{}")},
            "runtime",
            {"runtime_event_name": "item/started", "runtime_json": "{}"},
            False,
        ),
        ({}, "", {}, False),
    ],
)
def test_event_conversion(body, kind, expected, terminal):
    msg = _event(5, **body)
    event = _convert.event_from_proto(msg)
    assert event.kind == kind
    assert (event.session_id, event.seq, event.turn_id) == ("ses_1", 5, "trn_1")
    assert event.create_time.tzinfo is timezone.utc
    for name, value in expected.items():
        assert getattr(event, name) == value
    assert event.is_terminal is terminal
    assert event.raw is msg


def test_snapshot_conversion():
    msg = resources_pb2.Snapshot(
        session_id="ses_1",
        snapshot_id="snp_1",
        seq=9,
        runtime="shell",
        history=[
            resources_pb2.HistoryItem(
                role=resources_pb2.HISTORY_ITEM_ROLE_INPUT, text="ls", turn_id="trn_1"
            ),
            resources_pb2.HistoryItem(role=resources_pb2.HISTORY_ITEM_ROLE_OUTPUT, text="a\n"),
        ],
        create_time=_ts(10),
    )
    snap = _convert.snapshot_from_proto(msg)
    assert snap.seq == 9 and snap.snapshot_id == "snp_1"
    assert [h.role for h in snap.history] == [
        sdk.HistoryItemRole.INPUT,
        sdk.HistoryItemRole.OUTPUT,
    ]
    assert snap.history[0].text == "ls"


# -- clients against an in-process fake service -----------------------------------------


class FakeSessionService(session_service_pb2_grpc.SessionServiceServicer):
    """Serves one shell session whose turn trn_1 emits output, then completes with exit 3."""

    def __init__(self) -> None:
        self.log = [
            _event(1, input_received=resources_pb2.InputReceived(input="echo hi")),
            _event(2, turn_started=resources_pb2.TurnStarted(worker_id="w1")),
            _event(
                3,
                output=resources_pb2.OutputChunk(
                    stream=resources_pb2.OUTPUT_STREAM_STDOUT, text="hi\n"
                ),
            ),
            _event(4, turn_completed=resources_pb2.TurnCompleted(exit_code=3)),
        ]
        self.release = asyncio.Event()  # the terminal event is live, sent once set
        self.stream_cancelled = asyncio.Event()
        self.send_keys: dict[str, int] = {}

    def _turn(self) -> resources_pb2.Turn:
        done = self.release.is_set()
        return resources_pb2.Turn(
            turn_id="trn_1",
            session_id="ses_1",
            input="echo hi",
            state=resources_pb2.TURN_STATE_COMPLETED if done else resources_pb2.TURN_STATE_RUNNING,
            exit_code=3 if done else 0,
        )

    async def _not_found(self, context, session_id: str):
        status = _rich_status(
            grpc.StatusCode.NOT_FOUND,
            f"session {session_id} not found",
            reason="SESSION_NOT_FOUND",
            metadata={"session_id": session_id},
        )
        context.set_trailing_metadata(
            (("grpc-status-details-bin", status.SerializeToString()),)
        )
        await context.abort(grpc.StatusCode.NOT_FOUND, status.message)

    async def GetSession(self, request, context):
        if request.session_id != "ses_1":
            await self._not_found(context, request.session_id)
        return session_service_pb2.GetSessionResponse(
            session=resources_pb2.Session(
                session_id="ses_1", runtime="shell", state=resources_pb2.SESSION_STATE_ACTIVE
            )
        )

    async def ListSessions(self, request, context):
        ids = ["ses_3", "ses_2", "ses_1"]
        start = int(request.page_token or 0)
        end = start + (request.page_size or 100)
        return session_service_pb2.ListSessionsResponse(
            sessions=[resources_pb2.Session(session_id=i) for i in ids[start:end]],
            next_page_token=str(end) if end < len(ids) else "",
        )

    async def SendInput(self, request, context):
        dedup = request.idempotency_key in self.send_keys
        self.send_keys.setdefault(request.idempotency_key, 1)
        return session_service_pb2.SendInputResponse(
            turn=self._turn(), deduplicated=bool(request.idempotency_key) and dedup
        )

    async def GetTurn(self, request, context):
        return session_service_pb2.GetTurnResponse(turn=self._turn())

    async def StreamSessionEvents(self, request, context):
        if request.session_id != "ses_1":
            await self._not_found(context, request.session_id)
        try:
            stored = [e for e in self.log[:3] if e.seq > request.after_seq]
            if stored:
                yield session_service_pb2.StreamSessionEventsResponse(events=stored)
            if request.stop_at_end:
                return
            await self.release.wait()
            yield session_service_pb2.StreamSessionEventsResponse(events=self.log[3:])
            await asyncio.Event().wait()  # live: stays open until the client cancels
        except asyncio.CancelledError:
            self.stream_cancelled.set()
            raise


@pytest.fixture
async def fake():
    service = FakeSessionService()
    server = grpc.aio.server()
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_async_client_translates_unary_errors(fake):
    _, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        with pytest.raises(sdk.NotFoundError) as info:
            await client.get_session("ses_missing")
        assert info.value.reason == "SESSION_NOT_FOUND"
        assert info.value.metadata == {"session_id": "ses_missing"}
        with pytest.raises(sdk.UnimplementedError):
            await client.fork_session("ses_1", "trn_1")
    await client.close()  # idempotent


async def test_async_client_translates_stream_errors(fake):
    _, target = fake
    async with sdk.AsyncClient(target) as client:
        with pytest.raises(sdk.NotFoundError):
            async for _ in client.stream_events("ses_missing"):
                pass


async def test_stream_yields_events_one_by_one_and_break_cancels(fake):
    service, target = fake
    async with sdk.AsyncClient(target) as client:
        stored = [e async for e in client.stream_events("ses_1", stop_at_end=True)]
        assert [e.seq for e in stored] == [1, 2, 3]
        assert [e.kind for e in stored] == ["input_received", "turn_started", "output"]

        events = client.stream_events("ses_1", after_seq=1)
        async with contextlib.aclosing(events):
            async for event in events:
                if event.seq == 3:
                    break
        await asyncio.wait_for(service.stream_cancelled.wait(), 5)


async def test_wait_for_turn_returns_after_terminal_event(fake):
    service, target = fake
    async with sdk.AsyncClient(target) as client:
        waiter = asyncio.create_task(client.wait_for_turn("ses_1", "trn_1"))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        service.release.set()
        turn = await asyncio.wait_for(waiter, 5)
        assert turn.state is sdk.TurnState.COMPLETED and turn.exit_code == 3


async def test_wait_for_turn_timeout_raises_deadline_exceeded(fake):
    _, target = fake
    async with sdk.AsyncClient(target) as client:
        with pytest.raises(sdk.DeadlineExceededError):
            await client.wait_for_turn("ses_1", "trn_1", timeout_s=0.2)


async def test_iter_sessions_walks_every_page(fake):
    _, target = fake
    async with sdk.AsyncClient(target) as client:
        ids = [s.session_id async for s in client.iter_sessions(page_size=2)]
        assert ids == ["ses_3", "ses_2", "ses_1"]
        page = await client.list_sessions(page_size=2)
        assert page.next_page_token == "2"


async def test_send_input_exposes_deduplicated(fake):
    _, target = fake
    async with sdk.AsyncClient(target) as client:
        first = await client.send_input("ses_1", "echo hi", idempotency_key="k")
        again = await client.send_input("ses_1", "echo hi", idempotency_key="k")
        assert not first.deduplicated and again.deduplicated


def _serve_in_thread():
    """Run the fake on its own loop so blocking clients can be used from this thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        service = FakeSessionService()
        server = grpc.aio.server()
        session_service_pb2_grpc.add_SessionServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return service, server, f"127.0.0.1:{port}"

    service, server, target = asyncio.run_coroutine_threadsafe(start(), loop).result(5)

    def release():
        loop.call_soon_threadsafe(service.release.set)

    def stop():
        try:
            asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()

    return target, release, stop


@pytest.fixture
def threaded_fake():
    target, release, stop = _serve_in_thread()
    yield target, release
    stop()


def test_sync_client_streams_and_translates(threaded_fake):
    target, release = threaded_fake
    with sdk.Client(target, timeout_s=5) as client:
        assert client.get_session("ses_1").state is sdk.SessionState.ACTIVE
        with pytest.raises(sdk.NotFoundError):
            client.get_session("ses_nope")
        events = client.stream_events("ses_1")
        assert [next(events).seq for _ in range(3)] == [1, 2, 3]
        release()
        assert next(events).is_terminal
        events.close()
        assert [s.session_id for s in client.iter_sessions(page_size=1)] == [
            "ses_3",
            "ses_2",
            "ses_1",
        ]
    client.close()  # idempotent
    with pytest.raises(RuntimeError):
        client.get_session("ses_1")


def test_cli_send_wait_prints_output_and_exits_with_code(threaded_fake):
    target, release = threaded_fake
    release()
    result = CliRunner().invoke(
        session_cli, ["--control-plane", target, "send", "ses_1", "echo hi", "--wait"]
    )
    assert result.exit_code == 3, result.output
    assert "hi\n" in result.stdout


def test_cli_events_and_errors(threaded_fake):
    target, _ = threaded_fake
    runner = CliRunner()
    result = runner.invoke(session_cli, ["--control-plane", target, "events", "ses_1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "#1 trn_1 input_received echo hi"

    missing = runner.invoke(session_cli, ["--control-plane", target, "get", "ses_missing"])
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error: session ses_missing not found (SESSION_NOT_FOUND)"
    assert "Traceback" not in missing.output
