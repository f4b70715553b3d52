"""The SDK's conversions between protos and its types: enums, sessions, turns, events, items,
pending requests and snapshots, on constructed values.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.helpers.fake_session_service import _event, _ts
from tether import sdk
from tether.sdk import _convert
from tether.v1 import resources_pb2

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
