"""Unit tests of the SDK that need no control plane.

Error translation and conversion are tested on constructed values; the clients and the CLI are
tested against a small in-process fake `SessionService` on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from datetime import UTC, datetime

import click
import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from tether import sdk
from tether.sdk import _convert
from tether.sdk._errors import translate_rpc_error
from tether.sdk._transcript import Transcript
from tether.sdk.cli import session as session_cli
from tether.v1 import resources_pb2, session_service_pb2, session_service_pb2_grpc

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
        info = error_details_pb2.ErrorInfo(reason=reason, domain="tether.dev", metadata=metadata or {})
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
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
    err = translate_rpc_error(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "epoch 3 is stale", reason="LEASE_LOST"))
    assert type(err) is sdk.LeaseLostError
    assert isinstance(err, sdk.FailedPreconditionError)

    other = translate_rpc_error(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "archived", reason="SESSION_ARCHIVED"))
    assert type(other) is sdk.FailedPreconditionError


@pytest.mark.parametrize(
    ("code", "reason", "cls", "parent"),
    [
        (grpc.StatusCode.NOT_FOUND, "REQUEST_NOT_FOUND", sdk.RequestNotFoundError, sdk.NotFoundError),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "REQUEST_ALREADY_RESOLVED",
            sdk.RequestAlreadyResolvedError,
            sdk.FailedPreconditionError,
        ),
    ],
)
def test_request_reasons_have_typed_errors(code, reason, cls, parent):
    err = translate_rpc_error(_rpc_error(code, "no", reason=reason, metadata={"request_id": "req_1"}))
    assert type(err) is cls and isinstance(err, parent)
    assert (err.reason, err.metadata) == (reason, {"request_id": "req_1"})


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
    plain = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")
    err = translate_rpc_error(plain)
    assert type(err) is sdk.UnavailableError
    assert str(err) == "down"


def test_malformed_status_details_do_not_hide_the_error():
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00garbage"))
    err = translate_rpc_error(
        grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailing, details="oops")
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


@pytest.mark.parametrize(
    ("cls", "proto_enum", "prefix"),
    [
        (sdk.RequestKind, resources_pb2.RequestKind, "REQUEST_KIND_"),
        (sdk.RequestState, resources_pb2.RequestState, "REQUEST_STATE_"),
        (sdk.ItemKind, resources_pb2.ItemKind, "ITEM_KIND_"),
        (sdk.DeltaKind, resources_pb2.DeltaKind, "DELTA_KIND_"),
    ],
)
def test_request_and_item_enums_equal_proto_numbers(cls, proto_enum, prefix):
    assert {f"{prefix}{m.name}": int(m) for m in cls} == dict(proto_enum.items())


def test_every_event_body_kind_has_an_event_kind():
    oneof = resources_pb2.EventBody.DESCRIPTOR.oneofs_by_name["kind"]
    names = {f.name for f in oneof.fields}
    assert names == {k.value for k in sdk.EventKind if k is not sdk.EventKind.UNKNOWN}
    assert names == set(_convert._BODY_FIELDS)


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
    assert s.create_time == datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=UTC)
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
    assert turn.end_time is not None and turn.end_time.tzinfo is UTC
    running = _convert.turn_from_proto(resources_pb2.Turn(turn_id="trn_2", state=resources_pb2.TURN_STATE_RUNNING))
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
            {"output": resources_pb2.OutputChunk(stream=resources_pb2.OUTPUT_STREAM_STDERR, text="oops\n")},
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
        (
            {
                "item_delta": resources_pb2.ItemDelta(
                    item_id="msg_1", kind=resources_pb2.DELTA_KIND_AGENT_MESSAGE, delta="Hel"
                )
            },
            "item_delta",
            {"item_id": "msg_1", "delta_kind": sdk.DeltaKind.AGENT_MESSAGE, "text": "Hel"},
            False,
        ),
        (
            {"item_delta": resources_pb2.ItemDelta(item_id="c", kind=99, delta="x")},
            "item_delta",
            {"delta_kind": sdk.DeltaKind.UNSPECIFIED, "text": "x"},
            False,
        ),
        (
            {
                "agent_error": resources_pb2.AgentError(
                    message="model API failed", will_retry=True, code="internalServerError"
                )
            },
            "agent_error",
            {
                "error_message": "model API failed",
                "will_retry": True,
                "error_code": "internalServerError",
            },
            False,
        ),
        (
            {
                "request_resolved": resources_pb2.RequestResolved(
                    request_id="req_1",
                    state=resources_pb2.REQUEST_STATE_RESOLVED,
                    response_json='{"decision": "accept"}',
                )
            },
            "request_resolved",
            {
                "request_id": "req_1",
                "request_state": sdk.RequestState.RESOLVED,
                "response_json": '{"decision": "accept"}',
                "reason": "",
            },
            False,
        ),
        (
            {
                "request_resolved": resources_pb2.RequestResolved(
                    request_id="req_2",
                    state=resources_pb2.REQUEST_STATE_EXPIRED,
                    expire_reason="its turn ended",
                )
            },
            "request_resolved",
            {
                "request_id": "req_2",
                "request_state": sdk.RequestState.EXPIRED,
                "response_json": "",
                "reason": "its turn ended",
            },
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
    assert event.create_time.tzinfo is UTC
    for name, value in expected.items():
        assert getattr(event, name) == value
    assert event.is_terminal is terminal
    assert event.raw is msg


def _item(**fields) -> resources_pb2.Item:
    return resources_pb2.Item(item_id="call_1", **fields)


def test_item_events_carry_the_item():
    running = _convert.event_from_proto(
        _event(
            6,
            item_started=resources_pb2.ItemStarted(
                item=_item(kind=resources_pb2.ITEM_KIND_COMMAND_EXECUTION, command="ls", cwd="/w", status="inProgress"),
            ),
        )
    )
    assert running.kind is sdk.EventKind.ITEM_STARTED and running.item_id == "call_1"
    item = running.item
    assert isinstance(item, sdk.Item) and item.kind is sdk.ItemKind.COMMAND_EXECUTION
    assert (item.command, item.cwd, item.status) == ("ls", "/w", "inProgress")
    assert item.exit_code is None and item.changes == [] and item.raw is running.raw.body.item_started.item

    done = _convert.event_from_proto(
        _event(
            7,
            item_completed=resources_pb2.ItemCompleted(
                item=_item(
                    kind=resources_pb2.ITEM_KIND_COMMAND_EXECUTION,
                    command="ls",
                    exit_code=0,
                    status="completed",
                    aggregated_output="a\n",
                    raw_json='{"id": "call_1"}',
                ),
            ),
        )
    )
    assert done.kind is sdk.EventKind.ITEM_COMPLETED and not done.is_terminal
    assert done.item.exit_code == 0  # set to 0, not absent
    assert (done.item.aggregated_output, done.item.raw_json) == ("a\n", '{"id": "call_1"}')

    edit = _convert.item_from_proto(
        _item(
            kind=resources_pb2.ITEM_KIND_FILE_CHANGE,
            changes=[
                resources_pb2.FileChange(path="a.py", kind="update", diff="-a\n+b\n"),
                resources_pb2.FileChange(path="b.py", kind="add"),
            ],
        )
    )
    assert edit.changes == [sdk.FileChange("a.py", "update", "-a\n+b\n"), sdk.FileChange("b.py", "add", "")]
    assert _convert.item_from_proto(_item(kind=42)).kind is sdk.ItemKind.UNSPECIFIED


def test_token_usage_event():
    usage = resources_pb2.TokenUsage(
        last_input_tokens=1,
        last_output_tokens=2,
        total_input_tokens=3,
        total_cached_input_tokens=4,
        total_output_tokens=5,
        total_reasoning_output_tokens=6,
        total_tokens=7,
        model_context_window=8,
    )
    event = _convert.event_from_proto(_event(8, token_usage=usage))
    assert event.kind is sdk.EventKind.TOKEN_USAGE
    assert event.token_usage == sdk.TokenUsage(1, 2, 3, 4, 5, 6, 7, 8)


def test_request_opened_event_carries_the_pending_request():
    request = resources_pb2.PendingRequest(
        request_id="req_1",
        session_id="ses_1",
        turn_id="trn_1",
        kind=resources_pb2.REQUEST_KIND_FILE_CHANGE_APPROVAL,
        method="item/fileChange/requestApproval",
        params_json="{}",
        summary="change a.py",
        item_id="fc_1",
        state=resources_pb2.REQUEST_STATE_PENDING,
        create_time=_ts(100),
        available_decisions=["accept", "decline"],
    )
    event = _convert.event_from_proto(_event(9, request_opened=resources_pb2.RequestOpened(request=request)))
    assert event.kind is sdk.EventKind.REQUEST_OPENED and event.request_id == "req_1"
    r = event.request
    assert isinstance(r, sdk.PendingRequest) and r.is_pending
    assert (r.kind, r.state) == (sdk.RequestKind.FILE_CHANGE_APPROVAL, sdk.RequestState.PENDING)
    assert (r.session_id, r.turn_id, r.method, r.summary, r.item_id) == (
        "ses_1",
        "trn_1",
        "item/fileChange/requestApproval",
        "change a.py",
        "fc_1",
    )
    assert r.available_decisions == ["accept", "decline"]
    assert r.create_time.tzinfo is UTC and r.resolve_time is None
    assert (r.response_json, r.expire_reason) == ("", "")

    odd = _convert.pending_request_from_proto(resources_pb2.PendingRequest(kind=7, state=9))
    assert (odd.kind, odd.state) == (sdk.RequestKind.UNSPECIFIED, sdk.RequestState.UNSPECIFIED)


def test_history_item_event():
    event = _convert.event_from_proto(
        _event(
            10,
            history_item=resources_pb2.HistoryItem(
                role=resources_pb2.HISTORY_ITEM_ROLE_TOOL_CALL,
                text="ls",
                turn_id="trn_1",
                raw_json="{}",
            ),
        )
    )
    assert event.kind is sdk.EventKind.HISTORY_ITEM
    assert event.history_item == sdk.HistoryItem(sdk.HistoryItemRole.TOOL_CALL, "ls", "trn_1", "{}")


@pytest.mark.parametrize(
    ("response_json", "decision", "answers", "sent"),
    [
        ('{"decision": "cancel"}', None, None, {"decision": "cancel"}),
        (None, "decline", None, {"decision": "decline"}),
        (None, None, {"q1": ["Yes"]}, {"answers": {"q1": {"answers": ["Yes"]}}}),
        (None, None, {"q1": ("a", "b"), "q2": []}, {"answers": {"q1": {"answers": ["a", "b"]}, "q2": {"answers": []}}}),
    ],
)
def test_answer_json(response_json, decision, answers, sent):
    assert json.loads(_convert.answer_json(response_json, decision, answers)) == sent


def test_answer_json_takes_exactly_one_form():
    with pytest.raises(ValueError, match="got 0"):
        _convert.answer_json(None, None, None)
    with pytest.raises(ValueError, match="got 2"):
        _convert.answer_json("{}", "accept", None)
    with pytest.raises(ValueError, match="got 3"):
        _convert.answer_json("{}", "accept", {})
    with pytest.raises(TypeError):
        _convert.answer_json(None, None, {"q1": "Yes"})
    assert _convert.answer_json("", None, None) == ""  # the server judges an empty answer


def test_request_state_to_proto():
    assert _convert.request_state_to_proto(None) == resources_pb2.REQUEST_STATE_UNSPECIFIED
    assert _convert.request_state_to_proto("all") == resources_pb2.REQUEST_STATE_UNSPECIFIED
    assert _convert.request_state_to_proto("Pending") == resources_pb2.REQUEST_STATE_PENDING
    assert _convert.request_state_to_proto(sdk.RequestState.EXPIRED) == 3
    with pytest.raises(KeyError):
        _convert.request_state_to_proto("answered")


def test_snapshot_conversion():
    msg = resources_pb2.Snapshot(
        session_id="ses_1",
        snapshot_id="snp_1",
        seq=9,
        runtime="shell",
        history=[
            resources_pb2.HistoryItem(role=resources_pb2.HISTORY_ITEM_ROLE_INPUT, text="ls", turn_id="trn_1"),
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
                output=resources_pb2.OutputChunk(stream=resources_pb2.OUTPUT_STREAM_STDOUT, text="hi\n"),
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
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        await context.abort(grpc.StatusCode.NOT_FOUND, status.message)

    async def GetSession(self, request, context):
        if request.session_id != "ses_1":
            await self._not_found(context, request.session_id)
        return session_service_pb2.GetSessionResponse(
            session=resources_pb2.Session(session_id="ses_1", runtime="shell", state=resources_pb2.SESSION_STATE_ACTIVE)
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


def _serve_in_thread(service_type=None):
    """Run the fake on its own loop so blocking clients can be used from this thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        service = (service_type or FakeSessionService)()
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
    result = CliRunner().invoke(session_cli, ["--control-plane", target, "send", "ses_1", "echo hi", "--wait"])
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


# -- rendering events for a person ------------------------------------------------------


def _started(item_id: str, kind: int, **fields) -> dict:
    return {"item_started": resources_pb2.ItemStarted(item=resources_pb2.Item(item_id=item_id, kind=kind, **fields))}


def _completed(item_id: str, kind: int, **fields) -> dict:
    return {
        "item_completed": resources_pb2.ItemCompleted(item=resources_pb2.Item(item_id=item_id, kind=kind, **fields))
    }


def _delta(item_id: str, kind: int, delta: str) -> dict:
    return {"item_delta": resources_pb2.ItemDelta(item_id=item_id, kind=kind, delta=delta)}


def _opened(request_id: str, kind: int, **fields) -> dict:
    return {
        "request_opened": resources_pb2.RequestOpened(
            request=resources_pb2.PendingRequest(request_id=request_id, session_id="ses_1", kind=kind, **fields)
        )
    }


_AGENT = resources_pb2.ITEM_KIND_AGENT_MESSAGE
_COMMAND = resources_pb2.ITEM_KIND_COMMAND_EXECUTION
_FILES = resources_pb2.ITEM_KIND_FILE_CHANGE


def _render(bodies: list[dict], *, lifecycle: bool = False) -> tuple[str, str]:
    """(stdout, stderr) of rendering events with these bodies, styles removed."""
    out: list[str] = []
    err: list[str] = []
    transcript = Transcript(
        lifecycle=lifecycle,
        write=lambda text, to_err: (err if to_err else out).append(click.unstyle(text)),
    )
    for seq, body in enumerate(bodies, 1):
        transcript.render(_convert.event_from_proto(_event(seq, **body)))
    transcript.finish()
    return "".join(out), "".join(err)


def test_agent_message_deltas_print_inline_and_end_their_line():
    out, _ = _render(
        [
            _started("m1", _AGENT),
            _delta("m1", resources_pb2.DELTA_KIND_AGENT_MESSAGE, "Let me "),
            _delta("m1", resources_pb2.DELTA_KIND_AGENT_MESSAGE, "look."),
            _completed("m1", _AGENT, text="Let me look."),
            _completed("m2", _AGENT, text="Done."),  # no deltas: the text prints whole
            _started("m3", _AGENT),
            _delta("m3", resources_pb2.DELTA_KIND_AGENT_MESSAGE, "Unfinished"),
        ]
    )
    assert out == "Let me look.\nDone.\nUnfinished\n"


def test_a_command_prints_its_line_output_and_exit_code():
    out, _ = _render(
        [
            _started("c1", _COMMAND, command="ls -la", cwd="/w", status="inProgress"),
            _delta("c1", resources_pb2.DELTA_KIND_COMMAND_OUTPUT, "a.txt\nb"),
            _delta("c1", resources_pb2.DELTA_KIND_COMMAND_OUTPUT, ".txt"),
            _completed("c1", _COMMAND, command="ls -la", exit_code=2, aggregated_output="a.txt\nb.txt"),
            # Completed without a start or deltas: the line and the whole output still print.
            _completed("c2", _COMMAND, command="pwd", exit_code=0, aggregated_output="/w\n"),
            _started("c3", _COMMAND, command="rm -rf /"),
            _completed("c3", _COMMAND, command="rm -rf /", status="declined"),
        ]
    )
    assert out == ("$ ls -la\na.txt\nb.txt\n[exit 2]\n$ pwd\n/w\n[exit 0]\n$ rm -rf /\n[declined]\n")


def test_file_changes_print_paths_and_diffs_once():
    change = resources_pb2.FileChange(path="src/a.py", kind="update", diff="@@ -1 +1 @@\n-a\n+b")
    out, _ = _render(
        [
            _started("f1", _FILES, changes=[change], status="inProgress"),
            _delta("f1", resources_pb2.DELTA_KIND_FILE_CHANGE, "Success. Updated files"),
            _completed("f1", _FILES, changes=[change], status="completed"),
            _completed("f2", _FILES, changes=[resources_pb2.FileChange(path="new.txt", kind="add")], status="failed"),
        ]
    )
    assert out == "~ src/a.py (update)\n@@ -1 +1 @@\n-a\n+b\n~ new.txt (add)\n[failed]\n"


def test_an_approval_request_says_how_to_answer_it():
    out, _ = _render(
        [
            _opened(
                "req_A",
                resources_pb2.REQUEST_KIND_COMMAND_APPROVAL,
                summary="rm -rf build",
                available_decisions=["accept", "decline"],
            ),
            _opened("req_B", resources_pb2.REQUEST_KIND_FILE_CHANGE_APPROVAL, summary="change a.py"),
            # Decisions that --decision cannot send are left out of the hint.
            _opened(
                "req_C",
                resources_pb2.REQUEST_KIND_COMMAND_APPROVAL,
                summary="touch x",
                available_decisions=["accept", "acceptWithExecpolicyAmendment", "cancel"],
            ),
            _opened(
                "req_D",
                resources_pb2.REQUEST_KIND_COMMAND_APPROVAL,
                summary="touch y",
                available_decisions=["acceptWithExecpolicyAmendment"],
            ),
        ]
    )
    assert out.splitlines() == [
        "? approval needed [req_A] command: rm -rf build — answer with: "
        "tether session respond ses_1 req_A --decision accept|decline",
        "? approval needed [req_B] file change: change a.py — answer with: "
        "tether session respond ses_1 req_B --decision accept|decline",
        "? approval needed [req_C] command: touch x — answer with: "
        "tether session respond ses_1 req_C --decision accept|cancel",
        "? approval needed [req_D] command: touch y — answer with: "
        """tether session respond ses_1 req_D --json '{"decision": ...}'""",
    ]


def test_a_multi_line_command_is_shown_whole_before_the_answer_hint():
    out, _ = _render(
        [
            _opened(
                "req_A",
                resources_pb2.REQUEST_KIND_COMMAND_APPROVAL,
                summary="cat <<EOF > a\nx\nEOF — writes a",
                available_decisions=["accept"],
            ),
        ]
    )
    assert out.splitlines() == [
        "? approval needed [req_A] command:",
        "    cat <<EOF > a",
        "    x",
        "    EOF — writes a",
        "  answer with: tether session respond ses_1 req_A --decision accept",
    ]


def test_a_user_input_request_lists_its_questions():
    params = {
        "questions": [
            {
                "id": "colour",
                "header": "Colour",
                "question": "Which colour?",
                "options": [{"label": "Red"}, {"label": "Blue"}],
            },
            {"id": "name", "question": "Your name?"},
        ]
    }
    out, _ = _render(
        [
            _opened(
                "req_Q", resources_pb2.REQUEST_KIND_USER_INPUT, summary="Which colour?", params_json=json.dumps(params)
            ),
            _opened("req_R", resources_pb2.REQUEST_KIND_USER_INPUT, summary="Anything?", params_json="not json"),
            _opened("req_S", resources_pb2.REQUEST_KIND_UNSPECIFIED, method="x/ask", summary="?"),
        ]
    )
    assert out.splitlines() == [
        "? input needed [req_Q]",
        "    colour: Which colour? (options: Red, Blue)",
        "    name: Your name?",
        "  answer with: tether session respond ses_1 req_Q --answer colour=TEXT --answer name=TEXT",
        "? input needed [req_R] Anything? — answer with: tether session respond ses_1 req_R --answer QUESTION_ID=TEXT",
        "? request [req_S] x/ask: ? — answer with: tether session respond ses_1 req_S --json '{...}'",
    ]


def test_resolved_requests_usage_errors_reasoning_and_hidden_kinds():
    out, _ = _render(
        [
            {
                "request_resolved": resources_pb2.RequestResolved(
                    request_id="req_A",
                    state=resources_pb2.REQUEST_STATE_RESOLVED,
                    response_json='{"decision": "accept"}',
                )
            },
            {
                "request_resolved": resources_pb2.RequestResolved(
                    request_id="req_Q",
                    state=resources_pb2.REQUEST_STATE_RESOLVED,
                    response_json='{"answers": {"q": {"answers": ["x"]}}}',
                )
            },
            {
                "request_resolved": resources_pb2.RequestResolved(
                    request_id="req_B",
                    state=resources_pb2.REQUEST_STATE_EXPIRED,
                    expire_reason="its turn ended (failed) before an answer",
                )
            },
            {
                "token_usage": resources_pb2.TokenUsage(
                    last_input_tokens=1200, last_output_tokens=85, total_tokens=12345, model_context_window=272000
                )
            },
            {"token_usage": resources_pb2.TokenUsage(total_tokens=5)},
            {
                "agent_error": resources_pb2.AgentError(
                    message="stream disconnected", will_retry=True, code="responseStreamDisconnected"
                )
            },
            {"agent_error": resources_pb2.AgentError(message="quota exceeded")},
            _completed("r1", resources_pb2.ITEM_KIND_REASONING, text="Check the tests first"),
            _completed("r2", resources_pb2.ITEM_KIND_REASONING, text=""),
            _delta("r3", resources_pb2.DELTA_KIND_REASONING, "hidden until complete"),
            _completed("u1", resources_pb2.ITEM_KIND_USER_MESSAGE, text="fix it"),
            {"history_item": resources_pb2.HistoryItem(role=1, text="fix it")},
            _started("t1", resources_pb2.ITEM_KIND_TOOL_CALL, text="docs.search({})"),
            _completed("t1", resources_pb2.ITEM_KIND_TOOL_CALL, text="docs.search({})", status="failed"),
        ]
    )
    assert out.splitlines() == [
        "= answered [req_A]: accept",
        '= answered [req_Q]: {"answers": {"q": {"answers": ["x"]}}}',
        "= expired [req_B]: its turn ended (failed) before an answer",
        "tokens: 1,200 in / 85 out (total 12,345, context window 272,000)",
        "tokens: 0 in / 0 out (total 5)",
        "agent error: stream disconnected [responseStreamDisconnected] (retrying)",
        "agent error: quota exceeded",
        "thinking: Check the tests first",
        "* tool: docs.search({})",
        "[failed]",
    ]


def test_lifecycle_lines_frame_the_transcript_in_events_mode():
    bodies = [
        {"input_received": resources_pb2.InputReceived(input="list files")},
        {"turn_started": resources_pb2.TurnStarted(worker_id="w1")},
        _started("m1", _AGENT),
        _delta("m1", resources_pb2.DELTA_KIND_AGENT_MESSAGE, "Listing"),
        {"output": resources_pb2.OutputChunk(stream=resources_pb2.OUTPUT_STREAM_STDERR, text="w\n")},
        {"history_item": resources_pb2.HistoryItem(role=2, text="Listing")},
        {"turn_completed": resources_pb2.TurnCompleted(exit_code=0)},
    ]
    out, err = _render(bodies, lifecycle=True)
    assert out.splitlines() == [
        "#1 trn_1 input_received list files",
        "#2 trn_1 turn_started worker=w1",
        "Listing",
        "#5 trn_1 output [stderr] w",
        "#7 trn_1 turn_completed exit_code=0",
    ]
    assert err == ""
    # Following a turn: output chunks inline and byte for byte, the turn's own events silent.
    out, err = _render(bodies)
    assert (out, err) == ("Listing\n", "w\n")
    out, _ = _render(
        [
            {"output": resources_pb2.OutputChunk(stream=resources_pb2.OUTPUT_STREAM_STDOUT, text="a")},
            {"turn_completed": resources_pb2.TurnCompleted(exit_code=0)},
        ]
    )
    assert out == "a"


class FakeAgentSession(FakeSessionService):
    """A turn of an agent: a message, a command that needed approval, then completion."""

    def __init__(self) -> None:
        super().__init__()
        self.log[3:] = [
            _event(4, **_started("m1", _AGENT)),
            _event(5, **_delta("m1", resources_pb2.DELTA_KIND_AGENT_MESSAGE, "Cleaning up.")),
            _event(6, **_completed("m1", _AGENT, text="Cleaning up.")),
            _event(7, **_started("c1", _COMMAND, command="rm -rf build")),
            _event(
                8,
                **_opened(
                    "req_A",
                    resources_pb2.REQUEST_KIND_COMMAND_APPROVAL,
                    summary="rm -rf build",
                    available_decisions=["accept", "decline"],
                    state=resources_pb2.REQUEST_STATE_PENDING,
                ),
            ),
            _event(
                9,
                request_resolved=resources_pb2.RequestResolved(
                    request_id="req_A",
                    state=resources_pb2.REQUEST_STATE_RESOLVED,
                    response_json='{"decision": "accept"}',
                ),
            ),
            _event(10, **_completed("c1", _COMMAND, command="rm -rf build", exit_code=0)),
            _event(11, token_usage=resources_pb2.TokenUsage(last_input_tokens=10, total_tokens=20)),
            _event(12, turn_completed=resources_pb2.TurnCompleted(exit_code=3)),
        ]

    async def StreamSessionEvents(self, request, context):
        # All of it is stored: every event is sent, then the stream ends (or stays open).
        stored = [e for e in self.log if e.seq > request.after_seq]
        yield session_service_pb2.StreamSessionEventsResponse(events=stored)
        if not request.stop_at_end:
            await asyncio.Event().wait()


@pytest.fixture
def threaded_agent_fake():
    target, release, stop = _serve_in_thread(FakeAgentSession)
    release()
    yield target
    stop()


def test_cli_send_wait_renders_an_agent_turn(threaded_agent_fake):
    result = CliRunner().invoke(
        session_cli,
        ["--control-plane", threaded_agent_fake, "send", "ses_1", "clean", "--follow"],
    )
    assert result.exit_code == 3, result.output
    assert result.stdout.splitlines() == [
        "hi",
        "Cleaning up.",
        "$ rm -rf build",
        "? approval needed [req_A] command: rm -rf build — answer with: "
        "tether session respond ses_1 req_A --decision accept|decline",
        "= answered [req_A]: accept",
        "[exit 0]",
        "tokens: 10 in / 0 out (total 20)",
    ]


def test_cli_events_json_keeps_every_field(threaded_agent_fake):
    result = CliRunner().invoke(
        session_cli,
        ["--control-plane", threaded_agent_fake, "events", "ses_1", "--json", "--after", "3"],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_seq = {line["seq"]: line for line in lines}
    assert by_seq[7]["kind"] == "item_started"
    assert by_seq[7]["item"]["command"] == "rm -rf build" and by_seq[7]["item"]["kind"] == "COMMAND_EXECUTION"
    assert by_seq[8]["request"]["available_decisions"] == ["accept", "decline"]
    assert by_seq[8]["request_id"] == "req_A" and by_seq[8]["request"]["state"] == "PENDING"
    assert by_seq[9]["request_state"] == "RESOLVED"
    assert by_seq[10]["item"]["exit_code"] == 0
    assert by_seq[11]["token_usage"]["total_tokens"] == 20
