"""Bad input gets a precise status, names the field, and changes nothing."""

from __future__ import annotations

from typing import cast

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import error_details_pb2, status_pb2

from tether import sdk
from tether.v1 import resources_pb2 as rpb
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc


def _details(err: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, "a rich status is attached"
    status = status_pb2.Status.FromString(raw)
    reason, fields = "", []
    for d in status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            reason = info.reason
            assert info.domain == "tether.dev"
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


@pytest.fixture
async def stubs(control_plane):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") as ch:
        yield sgrpc.SessionServiceStub(ch), wgrpc.WorkerServiceStub(ch)


async def _state(client: sdk.AsyncClient) -> list[tuple]:
    out = []
    async for s in client.iter_sessions():
        events = [(e.seq, e.kind) async for e in client.stream_events(s.session_id, stop_at_end=True)]
        out.append((s.session_id, s.turn_count, s.state, s.title, tuple(sorted(s.labels.items())), tuple(events)))
    return out


CASES = [
    (
        "unknown session",
        "GetSession",
        lambda sid: spb.GetSessionRequest(session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA"),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
        None,
    ),
    (
        "input to unknown session",
        "SendInput",
        lambda sid: spb.SendInputRequest(session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA", input="ls"),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
        None,
    ),
    (
        "empty command",
        "SendInput",
        lambda sid: spb.SendInputRequest(session_id=sid, input="   "),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "input",
    ),
    (
        "missing session id",
        "SendInput",
        lambda sid: spb.SendInputRequest(input="ls"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session_id",
    ),
    (
        "unknown enum",
        "ListSessions",
        lambda sid: spb.ListSessionsRequest(state=99),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "state",
    ),
    (
        "page size out of range",
        "ListSessions",
        lambda sid: spb.ListSessionsRequest(page_size=5000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "page_size",
    ),
    (
        "forged page token",
        "ListSessions",
        lambda sid: spb.ListSessionsRequest(page_token="not-a-token"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        "page_token",
    ),
    (
        "unknown session order",
        "ListSessions",
        lambda sid: spb.ListSessionsRequest(order_by="size desc"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "order_by",
    ),
    (
        "bad runtime filter",
        "ListSessions",
        lambda sid: spb.ListSessionsRequest(runtime="she ll"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "runtime",
    ),
    (
        "bad label filter",
        "ListSessions",
        lambda sid: spb.ListSessionsRequest(labels={"bad key": "x"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "labels['bad key']",
    ),
    (
        "turns of no session",
        "ListTurns",
        lambda sid: spb.ListTurnsRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session_id",
    ),
    (
        "turns of an unknown session",
        "ListTurns",
        lambda sid: spb.ListTurnsRequest(session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA"),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
        None,
    ),
    (
        "unknown turn order",
        "ListTurns",
        lambda sid: spb.ListTurnsRequest(session_id=sid, order_by="input"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "order_by",
    ),
    (
        "turn page size out of range",
        "ListTurns",
        lambda sid: spb.ListTurnsRequest(session_id=sid, page_size=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "page_size",
    ),
    (
        "forged turn page token",
        "ListTurns",
        lambda sid: spb.ListTurnsRequest(session_id=sid, page_token="eyJ2IjoyfQ=="),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        "page_token",
    ),
    (
        "export without a session id",
        "ExportSession",
        lambda sid: spb.ExportSessionRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session_id",
    ),
    (
        "export of an unknown session",
        "ExportSession",
        lambda sid: spb.ExportSessionRequest(session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA"),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
        None,
    ),
    (
        "an output schema that is not JSON",
        "SendInput",
        lambda sid: spb.SendInputRequest(session_id=sid, input="x", output_schema="{type: object"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "output_schema",
    ),
    (
        "an output schema that is not a schema",
        "SendInput",
        lambda sid: spb.SendInputRequest(session_id=sid, input="x", output_schema='{"type": 12}'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "output_schema",
    ),
    (
        "an output schema that is a list",
        "SendInput",
        lambda sid: spb.SendInputRequest(session_id=sid, input="x", output_schema="[1]"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "output_schema",
    ),
    (
        "a deletion in the past",
        "DeleteSession",
        lambda sid: spb.DeleteSessionRequest(session_id=sid, delete_after=duration_pb2.Duration(seconds=-5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "delete_after",
    ),
    (
        "a deletion too far ahead",
        "DeleteSession",
        lambda sid: spb.DeleteSessionRequest(session_id=sid, delete_after=duration_pb2.Duration(seconds=4000 * 86400)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "delete_after",
    ),
    (
        "cancel the deletion of no session",
        "CancelSessionDeletion",
        lambda sid: spb.CancelSessionDeletionRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session_id",
    ),
    (
        "cancel the deletion of an unknown session",
        "CancelSessionDeletion",
        lambda sid: spb.CancelSessionDeletionRequest(session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA"),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
        None,
    ),
    (
        "update without a session id",
        "UpdateSession",
        lambda sid: spb.UpdateSessionRequest(session=rpb.Session(title="t")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session.session_id",
    ),
    (
        "update of an unknown session",
        "UpdateSession",
        lambda sid: spb.UpdateSessionRequest(
            session=rpb.Session(session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA", title="t")
        ),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
        None,
    ),
    (
        "update that names nothing",
        "UpdateSession",
        lambda sid: spb.UpdateSessionRequest(session=rpb.Session(session_id=sid)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "update_mask",
    ),
    (
        "update with an empty mask",
        "UpdateSession",
        lambda sid: spb.UpdateSessionRequest(
            session=rpb.Session(session_id=sid, title="t"), update_mask=field_mask_pb2.FieldMask()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "update_mask.paths",
    ),
    (
        "update of a field that cannot change",
        "UpdateSession",
        lambda sid: spb.UpdateSessionRequest(
            session=rpb.Session(session_id=sid, title="t", runtime="codex"),
            update_mask=field_mask_pb2.FieldMask(paths=["title", "runtime"]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "update_mask.paths[1]",
    ),
    (
        "a title of two lines",
        "UpdateSession",
        lambda sid: spb.UpdateSessionRequest(session=rpb.Session(session_id=sid, title="one\ntwo")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session.title",
    ),
    (
        "an overlong title",
        "UpdateSession",
        lambda sid: spb.UpdateSessionRequest(session=rpb.Session(session_id=sid, title="t" * 257)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session.title",
    ),
    (
        "a bad label in an update",
        "UpdateSession",
        lambda sid: spb.UpdateSessionRequest(
            session=rpb.Session(session_id=sid, labels={"ok": "1", "no way": "2"}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session.labels['no way']",
    ),
    (
        "bad runtime name",
        "CreateSession",
        lambda sid: spb.CreateSessionRequest(runtime="she ll"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "runtime",
    ),
    (
        "missing runtime",
        "CreateSession",
        lambda sid: spb.CreateSessionRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "runtime",
    ),
    (
        "unknown turn",
        "GetTurn",
        lambda sid: spb.GetTurnRequest(session_id=sid, turn_id="trn_nope"),
        grpc.StatusCode.NOT_FOUND,
        "TURN_NOT_FOUND",
        None,
    ),
    (
        "interrupt with nothing running",
        "InterruptTurn",
        lambda sid: spb.InterruptTurnRequest(session_id=sid),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_ACTIVE_TURN",
        None,
    ),
    (
        "no snapshot yet",
        "GetSnapshot",
        lambda sid: spb.GetSnapshotRequest(session_id=sid),
        grpc.StatusCode.NOT_FOUND,
        "SNAPSHOT_NOT_FOUND",
        None,
    ),
    (
        "snapshot with no worker",
        "CreateSnapshot",
        lambda sid: spb.CreateSnapshotRequest(session_id=sid),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_WORKER",
        None,
    ),
    (
        "unknown input policy",
        "SendInput",
        lambda sid: spb.SendInputRequest(session_id=sid, input="echo x", policy=9),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "policy",
    ),
    (
        "revert without a turn",
        "RevertSession",
        lambda sid: spb.RevertSessionRequest(session_id=sid),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "turn_id",
    ),
    (
        "revert to an unknown turn",
        "RevertSession",
        lambda sid: spb.RevertSessionRequest(session_id=sid, turn_id="trn_nope"),
        grpc.StatusCode.NOT_FOUND,
        "TURN_NOT_FOUND",
        None,
    ),
    (
        "unarchive without a session",
        "UnarchiveSession",
        lambda sid: spb.UnarchiveSessionRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session_id",
    ),
    (
        "fork without a session",
        "ForkSession",
        lambda sid: spb.ForkSessionRequest(turn_id="t"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "session_id",
    ),
    (
        "fork at an unknown turn",
        "ForkSession",
        lambda sid: spb.ForkSessionRequest(session_id=sid, turn_id="trn_nope"),
        grpc.StatusCode.NOT_FOUND,
        "TURN_NOT_FOUND",
        None,
    ),
    (
        "fork with no completed turn",
        "ForkSession",
        lambda sid: spb.ForkSessionRequest(session_id=sid),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_COMPLETED_TURN",
        None,
    ),
    (
        "fork with an overlong turn id",
        "ForkSession",
        lambda sid: spb.ForkSessionRequest(session_id=sid, turn_id="t" * 300),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "turn_id",
    ),
]


@pytest.mark.parametrize("name,method,build,code,reason,field", CASES, ids=[c[0] for c in CASES])
async def test_bad_session_requests(client, stubs, name, method, build, code, reason, field):
    session_stub, _ = stubs
    s = await client.create_session("shell", labels={"team": "a"})
    await client.send_input(s.session_id, "echo kept")
    await client.interrupt_turn(s.session_id)  # no worker: ends the queued turn, leaving an idle session
    before = await _state(client)
    assert before[0][3:5] == ("echo kept", (("team", "a"),))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        call = getattr(session_stub, method)(build(s.session_id), timeout=5)
        if method == "ExportSession":  # server-streamed: the error comes with the first read
            [r async for r in call]
        else:
            await call
    assert info.value.code() == code
    got_reason, fields = _details(info.value)
    assert got_reason == reason
    if field:
        assert fields == [field]
        assert field in info.value.details()
    assert await _state(client) == before


async def test_oversized_message_is_refused_and_changes_nothing(client, stubs):
    session_stub, _ = stubs
    s = await client.create_session("shell")
    before = await _state(client)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await session_stub.SendInput(spb.SendInputRequest(session_id=s.session_id, input="x" * (300 * 1024)), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await _state(client) == before


async def test_idempotency_key_reuse_with_other_input(client):
    s = await client.create_session("shell")
    first = await client.send_input(s.session_id, "echo a", idempotency_key="k1")
    again = await client.send_input(s.session_id, "echo a", idempotency_key="k1")
    assert again.turn_id == first.turn_id and again.deduplicated and not first.deduplicated
    with pytest.raises(sdk.AlreadyExistsError) as info:
        await client.send_input(s.session_id, "echo b", idempotency_key="k1")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert (await client.get_session(s.session_id)).turn_count == 1


async def test_archived_session_refuses_input_and_delete_removes_everything(client):
    s = await client.create_session("shell")
    await client.archive_session(s.session_id)
    with pytest.raises(sdk.FailedPreconditionError) as info:
        await client.send_input(s.session_id, "ls")
    assert info.value.reason == "SESSION_ARCHIVED"
    assert (await client.get_session(s.session_id)).state == sdk.SessionState.ARCHIVED
    await client.delete_session(s.session_id)
    with pytest.raises(sdk.NotFoundError):
        await client.get_session(s.session_id)
    with pytest.raises(sdk.NotFoundError):
        async for _ in client.stream_events(s.session_id, stop_at_end=True):
            pass


async def test_an_unarchived_session_takes_input_again_and_survives_a_restart_of_its_record(client, control_plane):
    s = await client.create_session("shell")
    assert (await client.unarchive_session(s.session_id)).state == sdk.SessionState.IDLE  # not archived: no-op
    await client.archive_session(s.session_id)
    back = await client.unarchive_session(s.session_id)
    assert back.state == sdk.SessionState.IDLE and back.update_time >= s.update_time
    # Stored, not only in memory: the session reloaded from the database is writable too.
    assert control_plane.hub is not None and control_plane.hub.evict_idle(now=float("inf")) >= 1
    turn = await client.send_input(s.session_id, "echo again")
    assert turn.state in (sdk.TurnState.QUEUED, sdk.TurnState.OFFERED)
    with pytest.raises(sdk.NotFoundError) as info:
        await client.unarchive_session("ses_01AAAAAAAAAAAAAAAAAAAAAAAA")
    assert info.value.reason == "SESSION_NOT_FOUND"


async def test_cursor_past_the_end_is_an_explicit_error(client):
    s = await client.create_session("shell")
    await client.send_input(s.session_id, "echo a")
    with pytest.raises(sdk.OutOfRangeError) as info:
        async for _ in client.stream_events(s.session_id, after_seq=5):
            pass
    assert info.value.reason == "CURSOR_OUT_OF_RANGE"


async def test_bad_worker_requests(stubs):
    _, worker_stub = stubs
    cases = [
        (wpb.RegisterRequest(worker_id="", runtimes=["shell"], slots=1), "worker_id"),
        (wpb.RegisterRequest(worker_id="w1", runtimes=[], slots=1), "runtimes"),
        (wpb.RegisterRequest(worker_id="w1", runtimes=["shell"], slots=0), "slots"),
        (wpb.RegisterRequest(worker_id="w/1", runtimes=["shell"], slots=1), "worker_id"),
        (
            wpb.RegisterRequest(
                worker_id="w1", runtimes=["shell"], slots=1, runtime_portability={"acp": rpb.RUNTIME_PORTABILITY_NONE}
            ),
            "runtime_portability['acp']",
        ),
        (
            wpb.RegisterRequest(
                worker_id="w1",
                runtimes=["shell"],
                slots=1,
                runtime_portability={"shell": cast(rpb.RuntimePortability, 9)},
            ),
            "runtime_portability['shell']",
        ),
    ]
    for req, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await worker_stub.Register(req, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _details(info.value) == ("INVALID_ARGUMENT", [field])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await worker_stub.Heartbeat(wpb.HeartbeatRequest(worker_id="ghost", registration_id="reg_x"), timeout=5)
    assert _details(info.value)[0] == "WORKER_NOT_REGISTERED"


async def test_pagination_walks_every_session_once(client):
    ids = [(await client.create_session("shell", labels={"n": str(i)})).session_id for i in range(5)]
    seen, token = [], ""
    while True:
        page = await client.list_sessions(page_size=2, page_token=token)
        seen += [s.session_id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
