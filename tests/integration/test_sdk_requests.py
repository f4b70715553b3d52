"""Pending requests through the SDK and the CLI: `respond_to_request`, `list_requests` and the
`tether session requests` / `respond` commands.

The first part runs the clients and the CLI against a small in-process fake `SessionService`
that records what it was sent; the second runs them against a real control plane, with a
scripted worker (`FakeWorker`) opening the requests a runtime would open mid-turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.helpers.fake_worker import FakeWorker, completed, started
from tests.helpers.processes import eventually
from tether import sdk
from tether.sdk.cli import session as session_cli
from tether.v1 import resources_pb2 as pb
from tether.v1 import session_service_pb2, session_service_pb2_grpc
from tether.v1 import worker_service_pb2 as wpb

_REQ = "req_" + "0" * 25 + "1"


def _request(request_id: str = _REQ, **fields) -> pb.PendingRequest:
    defaults = dict(
        session_id="ses_1",
        turn_id="trn_1",
        kind=pb.REQUEST_KIND_COMMAND_APPROVAL,
        method="item/commandExecution/requestApproval",
        params_json='{"command": "rm -rf build"}',
        summary="rm -rf build",
        item_id="call_1",
        state=pb.REQUEST_STATE_PENDING,
        create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        available_decisions=["accept", "decline"],
    )
    return pb.PendingRequest(request_id=request_id, **{**defaults, **fields})


async def _abort(context, code: grpc.StatusCode, reason: str, message: str) -> None:
    status = status_pb2.Status(code=code.value[0], message=message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tether.dev"))
    status.details.append(detail)
    await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))


class FakeRequests(session_service_pb2_grpc.SessionServiceServicer):
    """Session ses_1 holds one pending approval, _REQ; records every call."""

    def __init__(self) -> None:
        self.responses: list[session_service_pb2.RespondToRequestRequest] = []
        self.lists: list[session_service_pb2.ListRequestsRequest] = []
        self.pending = _request()

    async def RespondToRequest(self, request, context):
        self.responses.append(request)
        if request.request_id != _REQ:
            await _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                "REQUEST_NOT_FOUND",
                f"request {request.request_id!r} does not exist in session 'ses_1'",
            )
        if self.pending.state != pb.REQUEST_STATE_PENDING:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "REQUEST_ALREADY_RESOLVED",
                f"request {_REQ} was already answered",
            )
        self.pending.state = pb.REQUEST_STATE_RESOLVED
        self.pending.response_json = request.response_json
        self.pending.resolve_time.FromSeconds(1_700_000_100)
        return session_service_pb2.RespondToRequestResponse(request=self.pending)

    async def ListRequests(self, request, context):
        self.lists.append(request)
        found = [self.pending] if request.state in (0, self.pending.state) else []
        return session_service_pb2.ListRequestsResponse(requests=found)


async def _start() -> tuple[grpc.aio.Server, FakeRequests, str]:
    service = FakeRequests()
    server = grpc.aio.server()
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, service, f"127.0.0.1:{port}"


@pytest.fixture
async def fake():
    server, service, target = await _start()
    try:
        yield service, target
    finally:
        await server.stop(None)


@pytest.fixture
def threaded_fake():
    """The fake on its own loop, for the blocking client and the CLI."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, service, target = asyncio.run_coroutine_threadsafe(_start(), loop).result(5)
    try:
        yield service, target
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# -- the clients against the fake ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "sent"),
    [
        ((), {"decision": "accept"}, {"decision": "accept"}),
        ((), {"decision": "acceptForSession"}, {"decision": "acceptForSession"}),
        (
            (),
            {"answers": {"q1": ["Yes"], "q2": ["a", "b"]}},
            {"answers": {"q1": {"answers": ["Yes"]}, "q2": {"answers": ["a", "b"]}}},
        ),
        (
            ('{"decision": {"acceptWithExecpolicyAmendment": {}}}',),
            {},
            {"decision": {"acceptWithExecpolicyAmendment": {}}},
        ),
    ],
)
async def test_respond_to_request_sends_the_answer_as_json(fake, args, kwargs, sent):
    service, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        resolved = await client.respond_to_request("ses_1", _REQ, *args, **kwargs)
    request = service.responses[-1]
    assert (request.session_id, request.request_id) == ("ses_1", _REQ)
    assert json.loads(request.response_json) == sent
    assert isinstance(resolved, sdk.PendingRequest)
    assert resolved.state is sdk.RequestState.RESOLVED and not resolved.is_pending
    assert json.loads(resolved.response_json) == sent
    assert resolved.resolve_time is not None and resolved.kind is sdk.RequestKind.COMMAND_APPROVAL


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"response_json": '{"decision": "accept"}', "decision": "accept"},
        {"decision": "accept", "answers": {"q1": ["Yes"]}},
        {"response_json": "{}", "decision": "accept", "answers": {}},
    ],
)
async def test_respond_to_request_takes_exactly_one_form_of_answer(fake, kwargs):
    service, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        with pytest.raises(ValueError, match="exactly one"):
            await client.respond_to_request("ses_1", _REQ, **kwargs)
        with pytest.raises(TypeError, match="list of strings"):
            await client.respond_to_request("ses_1", _REQ, answers={"q1": "Yes"})
    assert service.responses == []  # refused before any call


async def test_respond_to_request_errors_are_typed(fake):
    _, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        with pytest.raises(sdk.RequestNotFoundError) as missing:
            await client.respond_to_request("ses_1", "req_" + "9" * 26, decision="accept")
        assert isinstance(missing.value, sdk.NotFoundError)
        assert missing.value.reason == "REQUEST_NOT_FOUND"
        await client.respond_to_request("ses_1", _REQ, decision="accept")
        with pytest.raises(sdk.RequestAlreadyResolvedError) as again:
            await client.respond_to_request("ses_1", _REQ, decision="decline")
        assert isinstance(again.value, sdk.FailedPreconditionError)


@pytest.mark.parametrize(
    ("state", "sent"),
    [
        (None, pb.REQUEST_STATE_UNSPECIFIED),
        ("all", pb.REQUEST_STATE_UNSPECIFIED),
        ("pending", pb.REQUEST_STATE_PENDING),
        ("RESOLVED", pb.REQUEST_STATE_RESOLVED),
        (sdk.RequestState.EXPIRED, pb.REQUEST_STATE_EXPIRED),
        (2, pb.REQUEST_STATE_RESOLVED),
    ],
)
async def test_list_requests_sends_the_state(fake, state, sent):
    service, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        found = await client.list_requests("ses_1", state=state)
    assert service.lists[-1].session_id == "ses_1" and service.lists[-1].state == sent
    if sent in (pb.REQUEST_STATE_UNSPECIFIED, pb.REQUEST_STATE_PENDING):
        (request,) = found
        assert request.request_id == _REQ and request.is_pending
        assert request.available_decisions == ["accept", "decline"]
    else:
        assert found == []


def test_sync_client_lists_and_responds(threaded_fake):
    service, target = threaded_fake
    with sdk.Client(target, timeout_s=5) as client:
        assert [r.request_id for r in client.list_requests("ses_1", state="pending")] == [_REQ]
        resolved = client.respond_to_request("ses_1", _REQ, answers={"q1": ["Yes"]})
        assert resolved.state is sdk.RequestState.RESOLVED
        with pytest.raises(sdk.RequestAlreadyResolvedError):
            client.respond_to_request("ses_1", _REQ, decision="accept")
        with pytest.raises(ValueError):
            client.respond_to_request("ses_1", _REQ)
    assert json.loads(service.responses[0].response_json) == {"answers": {"q1": {"answers": ["Yes"]}}}


# -- the CLI against the fake --------------------------------------------------------------------


def test_cli_requests_lists_pending_by_default(threaded_fake):
    service, target = threaded_fake
    runner = CliRunner()
    listed = runner.invoke(session_cli, ["--control-plane", target, "requests", "ses_1"])
    assert listed.exit_code == 0, listed.output
    assert service.lists[-1].state == pb.REQUEST_STATE_PENDING
    (line,) = listed.stdout.splitlines()
    assert line.startswith(f"{_REQ}  pending   command_approval")
    assert line.endswith("rm -rf build")

    as_json = runner.invoke(session_cli, ["--control-plane", target, "requests", "ses_1", "--state", "all", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert service.lists[-1].state == pb.REQUEST_STATE_UNSPECIFIED
    (request,) = json.loads(as_json.stdout)["requests"]
    assert request["request_id"] == _REQ and request["state"] == "PENDING"
    assert request["kind"] == "COMMAND_APPROVAL" and request["available_decisions"] == ["accept", "decline"]
    assert request["params_json"] == '{"command": "rm -rf build"}'

    none = runner.invoke(session_cli, ["--control-plane", target, "requests", "ses_1", "--state", "expired"])
    assert none.exit_code == 0 and none.stdout == ""
    assert none.stderr.strip() == "no expired requests"


def test_cli_respond_with_a_decision_and_again(threaded_fake):
    service, target = threaded_fake
    runner = CliRunner()
    answered = runner.invoke(session_cli, ["--control-plane", target, "respond", "ses_1", _REQ, "--decision", "accept"])
    assert answered.exit_code == 0, answered.output
    assert answered.stdout.strip() == f"{_REQ} resolved accept"
    assert json.loads(service.responses[-1].response_json) == {"decision": "accept"}

    again = runner.invoke(session_cli, ["--control-plane", target, "respond", "ses_1", _REQ, "--decision", "decline"])
    assert again.exit_code == 1
    assert again.stderr.strip() == (f"error: request {_REQ} was already answered (REQUEST_ALREADY_RESOLVED)")
    missing = runner.invoke(
        session_cli, ["--control-plane", target, "respond", "ses_1", "req_nope", "--decision", "accept"]
    )
    assert missing.exit_code == 1 and "(REQUEST_NOT_FOUND)" in missing.stderr


@pytest.mark.parametrize(
    ("flags", "sent"),
    [
        (
            ["--answer", "q1=Yes", "--answer", "q2=a=b", "--answer", "q1=Also"],
            {"answers": {"q1": {"answers": ["Yes", "Also"]}, "q2": {"answers": ["a=b"]}}},
        ),
        (["--json", '{"decision": "cancel"}'], {"decision": "cancel"}),
    ],
)
def test_cli_respond_with_answers_or_json(threaded_fake, flags, sent):
    service, target = threaded_fake
    result = CliRunner().invoke(
        session_cli, ["--control-plane", target, "respond", "ses_1", _REQ, *flags, "--output", "json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(service.responses[-1].response_json) == sent
    printed = json.loads(result.stdout)
    assert printed["state"] == "RESOLVED" and json.loads(printed["response_json"]) == sent


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--decision", "accept", "--json", "{}"],
        ["--decision", "accept", "--answer", "q1=Yes"],
        ["--decision", "maybe"],
        ["--answer", "no-equals-sign"],
    ],
)
def test_cli_respond_refuses_bad_usage_without_calling(threaded_fake, flags):
    service, target = threaded_fake
    result = CliRunner().invoke(session_cli, ["--control-plane", target, "respond", "ses_1", _REQ, *flags])
    assert result.exit_code == 2, result.output
    assert service.responses == []


# -- against a real control plane, with a scripted worker ----------------------------------------


def _opened(seq: int, turn_id: str, request_id: str, kind: int, **fields) -> wpb.WorkerEvent:
    request = pb.PendingRequest(request_id=request_id, kind=kind, **fields)
    return wpb.WorkerEvent(
        worker_seq=seq,
        turn_id=turn_id,
        body=pb.EventBody(request_opened=pb.RequestOpened(request=request)),
    )


@contextlib.asynccontextmanager
async def _running_turn(
    control_plane, client: sdk.AsyncClient, worker_id: str, text: str
) -> AsyncIterator[tuple[FakeWorker, sdk.Session, sdk.Turn, wpb.Offer]]:
    """A session whose turn a scripted worker has taken (and keeps its lease of)."""
    worker = FakeWorker(f"127.0.0.1:{control_plane.port}", worker_id)
    await worker.register()
    await worker.open_lease()
    try:
        s = await client.create_session("shell")
        turn = await client.send_input(s.session_id, text)
        offer = await worker.take_offer()
        worker.start_heartbeat({s.session_id: offer.lease_epoch})
        yield worker, s, turn, offer
    finally:
        await worker.close()


async def _events(client: sdk.AsyncClient, session_id: str) -> list[sdk.Event]:
    return [e async for e in client.stream_events(session_id, stop_at_end=True)]


async def test_a_pending_request_is_seen_listed_answered_once_and_delivered(control_plane, client):
    async with _running_turn(control_plane, client, "wkr_ask", "clean the build") as (worker, s, turn, offer):
        await worker.write(
            s.session_id,
            offer.lease_epoch,
            [
                started(1, turn.turn_id, "wkr_ask"),
                _opened(
                    2,
                    turn.turn_id,
                    _REQ,
                    pb.REQUEST_KIND_COMMAND_APPROVAL,
                    method="item/commandExecution/requestApproval",
                    summary="rm -rf build",
                    item_id="call_1",
                    available_decisions=["accept", "decline"],
                ),
            ],
        )

        # The application sees it in the event stream, as the control plane stored it.
        (opened,) = [e for e in await _events(client, s.session_id) if e.kind is sdk.EventKind.REQUEST_OPENED]
        assert opened.request_id == _REQ and opened.turn_id == turn.turn_id
        request = opened.request
        assert (request.kind, request.state) == (sdk.RequestKind.COMMAND_APPROVAL, sdk.RequestState.PENDING)
        assert (request.turn_id, request.summary, request.item_id) == (turn.turn_id, "rm -rf build", "call_1")
        assert request.available_decisions == ["accept", "decline"]
        assert request.create_time is not None

        (pending,) = await client.list_requests(s.session_id, state="pending")
        assert pending.request_id == _REQ and pending.session_id == s.session_id
        assert await client.list_requests(s.session_id, state=sdk.RequestState.RESOLVED) == []

        with pytest.raises(sdk.InvalidArgumentError) as bad:
            await client.respond_to_request(s.session_id, _REQ, decision="maybe")
        assert bad.value.field_violations[0][0] == "response_json"
        with pytest.raises(sdk.RequestNotFoundError):
            await client.respond_to_request(s.session_id, "req_" + "9" * 26, decision="accept")

        resolved = await client.respond_to_request(s.session_id, _REQ, decision="accept")
        assert resolved.state is sdk.RequestState.RESOLVED and resolved.resolve_time is not None
        assert json.loads(resolved.response_json) == {"decision": "accept"}

        answered = (await worker.next("answered")).answered
        assert (answered.session_id, answered.turn_id, answered.request_id) == (s.session_id, turn.turn_id, _REQ)
        assert json.loads(answered.response_json) == {"decision": "accept"}

        with pytest.raises(sdk.RequestAlreadyResolvedError):
            await client.respond_to_request(s.session_id, _REQ, decision="decline")
        assert await client.list_requests(s.session_id, state="pending") == []
        (listed,) = await client.list_requests(s.session_id)
        assert listed.state is sdk.RequestState.RESOLVED

        (resolved_event,) = [e for e in await _events(client, s.session_id) if e.kind is sdk.EventKind.REQUEST_RESOLVED]
        assert resolved_event.request_id == _REQ
        assert resolved_event.request_state is sdk.RequestState.RESOLVED
        assert json.loads(resolved_event.response_json) == {"decision": "accept"}

        await worker.write(s.session_id, offer.lease_epoch, [completed(3, turn.turn_id)])
        done = await client.wait_for_turn(s.session_id, turn.turn_id, timeout_s=10)
        assert done.state is sdk.TurnState.COMPLETED


async def test_user_input_is_answered_and_an_unanswered_request_expires_with_its_turn(control_plane, client):
    asked, unanswered = "req_" + "0" * 25 + "2", "req_" + "0" * 25 + "3"
    async with _running_turn(control_plane, client, "wkr_input", "pick a colour") as (worker, s, turn, offer):
        questions = {"questions": [{"id": "colour", "question": "Which colour?"}]}
        await worker.write(
            s.session_id,
            offer.lease_epoch,
            [
                started(1, turn.turn_id, "wkr_input"),
                _opened(
                    2,
                    turn.turn_id,
                    asked,
                    pb.REQUEST_KIND_USER_INPUT,
                    method="item/tool/requestUserInput",
                    summary="Which colour?",
                    params_json=json.dumps(questions),
                ),
                _opened(3, turn.turn_id, unanswered, pb.REQUEST_KIND_FILE_CHANGE_APPROVAL, summary="change a.py"),
            ],
        )
        assert [r.request_id for r in await client.list_requests(s.session_id)] == [asked, unanswered]

        with pytest.raises(sdk.InvalidArgumentError):  # a decision does not answer a question
            await client.respond_to_request(s.session_id, asked, decision="accept")
        await client.respond_to_request(s.session_id, asked, answers={"colour": ["Blue"]})
        answered = (await worker.next("answered")).answered
        assert json.loads(answered.response_json) == {"answers": {"colour": {"answers": ["Blue"]}}}

        await worker.write(s.session_id, offer.lease_epoch, [completed(4, turn.turn_id)])
        await client.wait_for_turn(s.session_id, turn.turn_id, timeout_s=10)

        async def expired() -> bool:
            return bool(await client.list_requests(s.session_id, state="expired"))

        await eventually(expired, what="the unanswered request to expire")
        (gone,) = await client.list_requests(s.session_id, state="expired")
        assert gone.request_id == unanswered and "turn ended" in gone.expire_reason
        with pytest.raises(sdk.RequestAlreadyResolvedError):
            await client.respond_to_request(s.session_id, unanswered, decision="accept")
        resolved, terminal = (await _events(client, s.session_id))[-2:]  # the terminal event stays last
        assert terminal.kind in (
            sdk.EventKind.TURN_COMPLETED,
            sdk.EventKind.TURN_FAILED,
            sdk.EventKind.TURN_INTERRUPTED,
        )
        last = resolved
        assert last.kind is sdk.EventKind.REQUEST_RESOLVED and last.request_id == unanswered
        assert last.request_state is sdk.RequestState.EXPIRED and last.reason == gone.expire_reason


async def test_cli_answers_a_request_of_a_real_control_plane(control_plane, client):
    """`requests`, `events` and `respond` end to end (the CLI blocks, so it runs in a thread)."""
    target = f"127.0.0.1:{control_plane.port}"
    async with _running_turn(control_plane, client, "wkr_cli", "clean up") as (worker, s, turn, offer):
        await worker.write(
            s.session_id,
            offer.lease_epoch,
            [
                started(1, turn.turn_id, "wkr_cli"),
                _opened(
                    2,
                    turn.turn_id,
                    _REQ,
                    pb.REQUEST_KIND_COMMAND_APPROVAL,
                    summary="rm -rf build",
                    available_decisions=["accept", "decline"],
                ),
            ],
        )

        def cli(*args: str):
            return CliRunner().invoke(session_cli, ["--control-plane", target, *args])

        listed = await asyncio.to_thread(cli, "requests", s.session_id)
        assert listed.exit_code == 0, listed.output
        assert listed.stdout.startswith(f"{_REQ}  pending")
        shown = await asyncio.to_thread(cli, "events", s.session_id)
        assert shown.exit_code == 0, shown.output
        assert (
            f"? approval needed [{_REQ}] command: rm -rf build — answer with: "
            f"tether session respond {s.session_id} {_REQ} --decision accept|decline"
        ) in shown.stdout.splitlines()
        answered = await asyncio.to_thread(cli, "respond", s.session_id, _REQ, "--decision", "decline")
        assert answered.exit_code == 0, answered.output
        assert answered.stdout.strip() == f"{_REQ} resolved decline"
        assert json.loads((await worker.next("answered")).answered.response_json) == {"decision": "decline"}
