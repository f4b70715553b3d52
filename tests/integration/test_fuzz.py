"""Arbitrary and malformed requests to every RPC, also mid-stream on open worker streams:
never INTERNAL, nothing of another owner changes.

The engine (request strategies from the descriptors, credentials, the victim's rows, the
mid-stream sequences) lives in bench/fuzz.py, which `make bench` runs with more examples.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from bench._fuzz_requests import Outcome, Requests, problem
from bench._fuzz_streams import STEP_TIMEOUT_S, EventsPlan, Record, StreamFuzzer
from bench.fuzz import VICTIM, Fixtures, LocalControlPlane, all_methods, run_fuzz, setup_fixtures
from tether.v1 import resources_pb2 as rpb
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

EXAMPLES_PER_METHOD = 40
MID_STREAM_EXAMPLES = 25  # of each kind
GARBAGE = b"\xff\xff\xff"  # a field number of 0 with a varint that never ends: no message


def test_every_rpc_survives_arbitrary_and_malformed_requests(tmp_path):
    report = run_fuzz(tmp_path, EXAMPLES_PER_METHOD, strict=True, mid_stream_examples=MID_STREAM_EXAMPLES)

    assert report.findings == []
    assert report.internal_errors == 0
    assert report.logged_errors == []
    assert report.still_serving, "health and a normal CreateSession answer after the run"
    assert report.rows_unchanged, f"owner {VICTIM!r}'s stored rows changed"
    assert report.protected_row_count >= 10, "the victim owns sessions, turns, events, a worker and credentials"
    assert set(report.by_method) == {m.name for m in all_methods()}
    assert set(report.credentials) == {"api_key", "worker_token", "none", "garbage"}
    # Every RPC got all its examples (the mid-stream sequences are checked below, step by step).
    short = {name: sum(codes.values()) for name, codes in report.by_method.items()}
    assert all(n >= EXAMPLES_PER_METHOD for n in short.values()), short
    assert report.requests >= len(all_methods()) * EXAMPLES_PER_METHOD

    # The mid-stream sequences got past every stream's first checks before misbehaving: each
    # lease sequence's Lease stream opened, each events sequence was granted a real turn and most
    # had their events acknowledged and then ended their turn cleanly on a second stream.
    depth = report.mid_stream
    assert depth["lease_streams_opened"] == 2 * MID_STREAM_EXAMPLES, depth
    assert depth["lease_malformed_after_open"] >= MID_STREAM_EXAMPLES, depth
    assert depth["events_leases_granted"] == MID_STREAM_EXAMPLES, depth
    # Not all: a sequence may release its own lease on the Lease stream before its events.
    assert depth["events_streams_acked"] >= MID_STREAM_EXAMPLES * 3 // 5, depth
    assert depth["lease_messages_on_a_held_lease"] > 0, depth
    assert depth["events_malformed_after_ack"] >= MID_STREAM_EXAMPLES, depth
    assert depth["snapshot_malformed_after_header"] > 0, depth
    assert depth["events_turns_completed"] >= MID_STREAM_EXAMPLES // 2, depth
    # Some of the sequences ran on the worker's shared stream, StreamWorkerEvents, as deep.
    assert depth["events_malformed_after_ack_shared"] > 0, depth
    assert depth["events_turns_completed_shared"] > 0, depth
    assert depth["requests_opened"] > 0, "some turns opened a real pending request to answer"


def _invalid_request(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    status = status_pb2.Status.FromString(dict(err.trailing_metadata())["grpc-status-details-bin"])
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        if detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
    assert info.reason == "INVALID_ARGUMENT"
    assert [v.field for v in bad.field_violations] == ["request"]


def _raw(channel: grpc.aio.Channel, kind: str, method: str):
    return getattr(channel, kind)(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


@pytest.fixture
async def channel(control_plane):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") as ch:
        yield ch


async def test_a_malformed_unary_request_is_invalid_argument(channel):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw(channel, "unary_unary", "/tether.v1.SessionService/GetSession")(GARBAGE, timeout=5)
    _invalid_request(info.value)


async def test_a_malformed_request_to_a_server_stream_is_invalid_argument(channel):
    call = _raw(channel, "unary_stream", "/tether.v1.SessionService/StreamSessionEvents")(GARBAGE, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    _invalid_request(info.value)


async def test_a_malformed_chunk_of_a_client_stream_is_invalid_argument(channel):
    header = wpb.SnapshotRequest(worker_id="w1", session_id="ses_01AAAAAAAAAAAAAAAAAAAAAAAA", lease_epoch=1)

    async def chunks():
        yield header.SerializeToString()
        yield GARBAGE

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw(channel, "stream_unary", "/tether.v1.WorkerService/Snapshot")(chunks(), timeout=5)
    _invalid_request(info.value)


async def test_a_malformed_message_on_an_open_lease_is_invalid_argument(channel):
    """The Lease stream reads its requests in a background task; the error still ends the call
    with INVALID_ARGUMENT, after the stream had opened."""
    registered = await wgrpc.WorkerServiceStub(channel).Register(
        wpb.RegisterRequest(worker_id="w1", runtimes=["shell"], slots=1), timeout=5
    )
    opened = wpb.LeaseRequest(open=wpb.LeaseOpen(worker_id="w1", registration_id=registered.registration_id))
    call = _raw(channel, "stream_stream", "/tether.v1.WorkerService/Lease")(timeout=5)
    await call.write(opened.SerializeToString())
    first = wpb.LeaseResponse.FromString(await call.read())
    assert first.WhichOneof("kind") == "opened"
    await call.write(GARBAGE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while await call.read() is not grpc.aio.EOF:
            pass
    _invalid_request(info.value)


async def test_a_huge_label_key_gets_a_readable_error(channel):
    """The key names the field in the error: uncut, a huge one made a status too large for the
    client to read (RESOURCE_EXHAUSTED on its side instead of INVALID_ARGUMENT)."""
    request = spb.CreateSessionRequest(runtime="shell", labels={"k" * 100_000: "v"})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw(channel, "unary_unary", "/tether.v1.SessionService/CreateSession")(
            request.SerializeToString(), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) < 200


async def test_a_huge_worker_id_gets_a_readable_error(control_plane, channel):
    """A paired worker naming another worker id: the refusal quoted the id whatever its size."""
    from tether.v1 import admin_service_pb2 as apb
    from tether.v1 import admin_service_pb2_grpc as agrpc

    key = await control_plane.create_api_key("owner", "alice")
    code = (
        await agrpc.AdminServiceStub(channel).CreatePairingCode(
            apb.CreatePairingCodeRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=5
        )
    ).code
    token = (await wgrpc.WorkerServiceStub(channel).Pair(wpb.PairRequest(code=code), timeout=5)).token
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await wgrpc.WorkerServiceStub(channel).Register(
            wpb.RegisterRequest(worker_id="w" * 100_000, runtimes=["shell"], slots=1),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) < 200


@contextlib.contextmanager
def _stream_fuzzer(tmp_path: pathlib.Path, record: Record) -> Iterator[tuple[grpc.Channel, Fixtures, StreamFuzzer]]:
    """A fuzz control plane with its fixtures, and the mid-stream sequences' runner on it that
    hands every answer to `record`."""
    with (
        LocalControlPlane(tmp_path / "fuzz.db") as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        fixtures = setup_fixtures(server, channel)
        yield channel, fixtures, StreamFuzzer(channel, fixtures.api_key, Requests(fixtures.ids), record)


HUGE = 60_000  # characters: under the 64 KiB answer limit, over what a client takes in trailers


@pytest.mark.parametrize(
    ("offered", "answer"),
    [
        ([], {"decision": "x" * HUGE}),  # the caller's own huge decision, quoted back
        (['{"amend": "' + "y" * HUGE + '"}'], {"decision": "nope"}),  # a worker's huge decision, listed
        (["a" * HUGE], {"decision": "b"}),
    ],
    ids=["huge-answer", "huge-json-decision-offered", "huge-decision-name-offered"],
)
def test_a_refused_answer_that_quotes_huge_text_still_arrives_as_invalid_argument(tmp_path, offered, answer):
    """Found by the mid-stream fuzz: RespondToRequest refuses an answer by quoting it and every
    decision the request takes. Uncut, the status outgrew the client's trailer limit and arrived
    as RESOURCE_EXHAUSTED "received metadata size exceeds hard limit", with no ErrorInfo."""
    answers = []

    def record(name: str, _: str, outcome: Outcome) -> None:
        if name == "RespondToRequest":
            answers.append(outcome)

    with _stream_fuzzer(tmp_path, record) as (_, _, streams):
        opened = rpb.PendingRequest(kind=rpb.REQUEST_KIND_COMMAND_APPROVAL, available_decisions=offered)
        streams.events_sequence(EventsPlan(0, opened.SerializeToString(), (json.dumps(answer),), 0, (), ()))
    assert streams.depth.counts["requests_opened"] == 1
    [outcome] = answers
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert outcome.rich, "the google.rpc.Status with tether's ErrorInfo arrived"
    assert len(outcome.details) < 4_000 and "characters cut" in outcome.details, outcome.details[:300]


@pytest.mark.parametrize(
    "body",
    [
        rpb.EventBody(input_received=rpb.InputReceived(input="rm -rf /")),
        rpb.EventBody(
            request_resolved=rpb.RequestResolved(
                request_id="req_01AAAAAAAAAAAAAAAAAAAAAAAA",
                state=rpb.REQUEST_STATE_RESOLVED,
                response_json='{"decision": "accept"}',
            )
        ),
        rpb.EventBody(turn_waiting=rpb.TurnWaiting(reason="no connected worker offers runtime x")),
    ],
    ids=["input_received", "request_resolved", "turn_waiting"],
)
def test_a_worker_cannot_write_the_events_the_control_plane_writes(tmp_path, body):
    """Found by the mid-stream fuzz: a worker's request_resolved (and turn_waiting) was stored,
    so a session's log could show an answer (to a request that never existed) that no
    application gave, or a running turn said to wait."""
    answers: list[tuple[str, Outcome]] = []

    def record(name: str, _: str, outcome: Outcome) -> None:
        answers.append((name, outcome))

    with _stream_fuzzer(tmp_path, record) as (channel, fixtures, streams):
        streams.events_sequence(EventsPlan(0, None, (), 0, (("event", body.SerializeToString(), 0),), ()))
        md = (("authorization", f"Bearer {fixtures.api_key}"),)
        sessions = sgrpc.SessionServiceStub(channel)
        [session] = [
            s for s in sessions.ListSessions(spb.ListSessionsRequest(), metadata=md).sessions if s.runtime == "script"
        ]
        log = sessions.StreamSessionEvents(
            spb.StreamSessionEventsRequest(session_id=session.session_id, stop_at_end=True), metadata=md, timeout=5
        )
        kinds = [e.body.WhichOneof("kind") for response in log for e in response.events]
    refused = [outcome for name, outcome in answers if name == "StreamEvents"][0]
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and "written by the control plane" in refused.details
    assert kinds.count("input_received") == 1 and "request_resolved" not in kinds, kinds
    assert "turn_waiting" not in kinds[kinds.index("turn_started") :], kinds
    assert kinds[-1] == "turn_completed", "the worker still ends its turn on the next stream"


def test_a_shared_stream_sequence_whose_lease_is_already_released_ends_without_waiting(tmp_path):
    """Found by the mid-stream fuzz (its own harness): a sequence that releases its lease on the
    Lease stream before sending events on StreamWorkerEvents gets them refused in-band, and the
    stream goes on; the sequence waited for an ack that never came until the call's deadline,
    and judged that a hang. It now stops waiting at the refusal, which is judged as an answer."""
    answers: list[tuple[str, Outcome]] = []
    with _stream_fuzzer(tmp_path, lambda name, _, outcome: answers.append((name, outcome))) as (_, _, streams):
        started = time.monotonic()
        streams.events_sequence(EventsPlan(0, None, (), 0, (("raw", b"\n\x01\xff"),), (), (("release", 0),), True))
        elapsed = time.monotonic() - started
    assert elapsed < STEP_TIMEOUT_S, "the sequence waited for the call's deadline"
    shared = [outcome for name, outcome in answers if name == "StreamWorkerEvents"]
    assert [problem(o) for o in shared] == [None] * len(shared), shared
    refusals = [o for o in shared if o.code != grpc.StatusCode.OK]
    assert refusals and all(o.rich for o in refusals), shared
    assert streams.depth.counts["events_refused_in_band"] >= 1
