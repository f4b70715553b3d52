"""A Codex CLI rollout as a Tether session bundle (`tether.sdk.codex_import`): synthetic rollout
lines in, the bundle parsed back line by line into the contract's messages, and the history a
worker would rebuild from it. The real Codex CLI writes the rollout in
tests/e2e/test_codex_import.py."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from google.protobuf import json_format

from tether.execution_worker._codex_rollout import history_to_raw
from tether.execution_worker._convert import history_from_resume
from tether.sdk.codex_import import (
    SUPPORTED_CLI_VERSIONS,
    RolloutError,
    bundle_from_rollout,
    default_codex_home,
    find_rollout,
)
from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb

THREAD = "01a2489b-be95-7043-977f-cefbbf73ecea"
PASSTHROUGH = "internal_chat_message_metadata_passthrough"
_clock = [0]


def line(kind: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One rollout line, a millisecond after the previous one."""
    _clock[0] += 1
    ms = _clock[0]
    return {
        "timestamp": f"2026-12-05T10:00:{ms // 1000:02d}.{ms % 1000:03d}Z",
        "type": kind,
        "payload": payload,
        **extra,
    }


def meta(version: str = "0.169.0") -> dict[str, Any]:
    return line(
        "session_meta",
        {"id": THREAD, "timestamp": "2026-12-05T10:00:00.000Z", "cwd": "/home/me/project", "cli_version": version},
        ordinal=0,
    )


def event(kind: str, **payload: Any) -> dict[str, Any]:
    return line("event_msg", {"type": kind, **payload})


def item(payload: dict[str, Any]) -> dict[str, Any]:
    return line("response_item", payload, metadata={"history_sequence": 1})


def message(role: str, text: str, id: str, **extra: Any) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "id": id, "role": role, "content": [{"type": part, "text": text}], **extra}


def started(turn: str) -> dict[str, Any]:
    return event("task_started", turn_id=turn, turn_attribution={"turn_id": turn}, model_context_window=1000)


def token_count(last_in: int, total_in: int) -> dict[str, Any]:
    usage = {"input_tokens": last_in, "cached_input_tokens": 0, "output_tokens": 5, "reasoning_output_tokens": 1}
    total = {**usage, "input_tokens": total_in, "total_tokens": total_in + 5}
    return event(
        "token_count",
        info={"total_token_usage": total, "last_token_usage": usage, "model_context_window": 1000},
        rate_limits=None,
    )


# The model-visible items of the thread below, in order, as Codex wrote them.
USER_1 = message("user", "remember: my colour is teal\nand more", "msg_u1", **{PASSTHROUGH: {"turn_id": "t1"}})
REPLY_1 = message("assistant", "Noted: teal.", "msg_1", **{PASSTHROUGH: {"turn_id": "t1"}})
USER_2 = message("user", "RUN: echo hi", "msg_u2")
CALL = {
    "type": "function_call",
    "id": "fc_2",
    "name": "exec_command",
    "arguments": '{"cmd": "echo hi"}',
    "call_id": "call_2",
    PASSTHROUGH: {"turn_id": "t2"},
}
OUTPUT = {
    "type": "function_call_output",
    "id": "fco_2",
    "call_id": "call_2",
    "output": "Process exited with code 0\nhi\n",
}
REASONING = {"type": "reasoning", "id": "rs_3", "summary": [{"type": "summary_text", "text": "the tool worked"}]}
REPLY_2 = message("assistant", "Done: hi", "msg_3", phase="final_answer")
USER_3 = message("user", "tell me a long story", "msg_u3")
ABORTED = message("user", "<turn_aborted>\nThe user interrupted the previous turn on purpose.\n</turn_aborted>", "m")
USER_4 = message("user", "FAIL please", "msg_u4")
VISIBLE = [USER_1, REPLY_1, USER_2, CALL, OUTPUT, REASONING, REPLY_2, USER_3, ABORTED, USER_4]
# What Codex writes into every thread itself: never history.
CONTEXT = [
    message("developer", "<permissions instructions>sandboxed</permissions instructions>", "msg_d"),
    message("user", "<environment_context>\n  <cwd>/home/me/project</cwd>\n</environment_context>", "msg_e"),
    message("user", "# AGENTS.md instructions for /home/me/project\n\nbe nice", "msg_a"),
    message("user", "<user_instructions>\nterse\n</user_instructions>", "msg_i"),
]


def thread_lines() -> list[dict[str, Any]]:
    command = {
        "type": "CommandExecution",
        "id": "call_2",
        "command": ["/bin/bash", "-lc", "echo hi"],
        "cwd": "file:///home/me/my%20project",
        "status": "completed",
        "aggregated_output": "hi\n",
        "exit_code": 0,
    }
    return [
        meta(),
        started("t1"),
        *(item(m) for m in CONTEXT),
        line("world_state", {"full": True}),
        line("turn_context", {"turn_id": "t1", "cwd": "/home/me/project"}),
        item(USER_1),
        event("item_completed", turn_id="t1", item={"type": "UserMessage", "id": "u1", "content": []}),
        event("item_completed", turn_id="t1", item={"type": "AgentMessage", "id": "msg_1", "content": []}),
        item(REPLY_1),
        line("token_usage_record", {"turn_id": "t1"}),
        token_count(10, 10),
        event("task_complete", turn_id="t1", last_agent_message="Noted: teal."),
        started("t2"),
        item(USER_2),
        item(CALL),
        event("item_completed", turn_id="t2", item=command),
        item(OUTPUT),
        token_count(20, 30),
        item(REASONING),
        item(REPLY_2),
        token_count(30, 60),
        event("task_complete", turn_id="t2", last_agent_message="Done: hi"),
        started("t3"),
        item(USER_3),
        item(ABORTED),
        event("turn_aborted", turn_id="t3", reason="interrupted"),
        started("t4"),
        item(USER_4),
        event(
            "task_complete",
            turn_id="t4",
            last_agent_message=None,
            error={"message": "high demand", "codex_error_info": "internal_server_error"},
        ),
    ]


def write(path: pathlib.Path, lines: list[Any]) -> pathlib.Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


class Bundle:
    """A bundle parsed back with the contract's messages, checking the line order on the way."""

    def __init__(self, data: bytes) -> None:
        rows = [json.loads(text) for text in data.decode("utf-8").splitlines()]
        assert data.endswith(b"\n")
        self.header = rows[0]
        assert rows[0]["tether_bundle"] == 1 and "exported_at" in rows[0] and "exported_by" in rows[0]
        assert [list(r) for r in rows[1:]] == [[next(iter(r))] for r in rows[1:]], "one key per line"
        keys = [next(iter(r)) for r in rows[1:]]
        order = ["session", "turn", "event", "end"]
        assert keys == sorted(keys, key=order.index) and keys[0] == "session" and keys[-1] == "end", keys
        self.session = json_format.ParseDict(rows[1]["session"], pb.Session())
        self.turns = [json_format.ParseDict(r["turn"], pb.Turn()) for r in rows if "turn" in r]
        self.events = [json_format.ParseDict(r["event"], pb.Event()) for r in rows if "event" in r]
        self.end = rows[-1]["end"]

    def kinds(self, turn: pb.Turn) -> list[str]:
        return [e.body.WhichOneof("kind") for e in self.events if e.turn_id == turn.turn_id]

    def of(self, kind: str, turn: pb.Turn | None = None) -> list[Any]:
        return [
            getattr(e.body, kind)
            for e in self.events
            if e.body.WhichOneof("kind") == kind and (turn is None or e.turn_id == turn.turn_id)
        ]


def without_bookkeeping(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != PASSTHROUGH}


@pytest.fixture
def bundle(tmp_path: pathlib.Path) -> Bundle:
    return Bundle(bundle_from_rollout(write(tmp_path / "rollout.jsonl", thread_lines())))


def test_the_bundle_has_the_session_its_turns_and_gapless_events(bundle: Bundle) -> None:
    s = bundle.session
    assert s.session_id.startswith("ses_") and len(s.session_id) == 30 and s.runtime == "codex"
    assert dict(s.labels) == {"imported-from": "codex", "codex-thread-id": THREAD, "codex-cli-version": "0.169.0"}
    assert s.title == "remember: my colour is teal" and s.create_time.ToJsonString() == "2026-12-05T10:00:00Z"
    assert [e.seq for e in bundle.events] == list(range(1, len(bundle.events) + 1))
    assert {e.session_id for e in bundle.events} == {s.session_id} == {t.session_id for t in bundle.turns}
    assert bundle.end == {"turns": 4, "events": len(bundle.events), "requests": 0, "snapshots": 0}
    times = [e.create_time.ToNanoseconds() for e in bundle.events]
    assert times == sorted(times)
    turn_ids = [t.turn_id for t in bundle.turns]
    assert len(set(turn_ids)) == 4 and turn_ids == sorted(turn_ids) and all(t.startswith("trn_") for t in turn_ids)
    seq = 1
    for turn in bundle.turns:  # each turn's events are one block: first_seq..last_seq
        assert turn.first_seq == seq and turn.last_seq >= turn.first_seq
        assert {e.turn_id for e in bundle.events[turn.first_seq - 1 : turn.last_seq]} == {turn.turn_id}
        first, last = bundle.events[turn.first_seq - 1], bundle.events[turn.last_seq - 1]
        assert first.body.WhichOneof("kind") == "input_received" and first.body.input_received.input == turn.input
        assert turn.create_time == turn.start_time == first.create_time and turn.end_time == last.create_time
        seq = turn.last_seq + 1
    assert seq == len(bundle.events) + 1


def test_turns_carry_the_users_input_the_final_message_and_how_they_ended(bundle: Bundle) -> None:
    t1, t2, t3, t4 = bundle.turns
    assert [t.input for t in bundle.turns] == [
        "remember: my colour is teal\nand more",
        "RUN: echo hi",
        "tell me a long story",
        "FAIL please",
    ]
    assert [t.state for t in bundle.turns] == [
        pb.TURN_STATE_COMPLETED,
        pb.TURN_STATE_COMPLETED,
        pb.TURN_STATE_INTERRUPTED,
        pb.TURN_STATE_FAILED,
    ]
    assert [t.final_message for t in bundle.turns] == ["Noted: teal.", "Done: hi", "", ""]
    assert t3.error_message == "Codex aborted the turn (interrupted)"
    assert t4.error_message == "high demand (internalServerError)"
    assert t2.usage.last_input_tokens == 30 and t2.usage.total_input_tokens == 60 and t2.usage.total_tokens == 65
    assert t2.usage.model_context_window == 1000 and t2.usage.total_reasoning_output_tokens == 1
    assert not t4.HasField("usage")
    assert all(t.worker_id == "" and t.lease_epoch == 0 and not t.reverted for t in bundle.turns)

    assert bundle.kinds(t1) == [
        "input_received",
        "turn_started",
        "history_item",
        "item_completed",
        "history_item",
        "token_usage",
        "turn_completed",
    ]
    assert bundle.kinds(t2) == [
        "input_received",
        "turn_started",
        "history_item",  # the user's message
        "history_item",  # the function call
        "item_completed",  # the command
        "history_item",  # its output
        "token_usage",
        "item_completed",  # the reasoning summary
        "history_item",
        "item_completed",  # the agent's message
        "history_item",
        "token_usage",
        "turn_completed",
    ]
    assert (
        bundle.kinds(t3)[-1] == "turn_interrupted" and bundle.of("turn_interrupted", t3)[0].reason == t3.error_message
    )
    assert bundle.kinds(t4)[-2:] == ["agent_error", "turn_failed"]
    [error] = bundle.of("agent_error", t4)
    assert (error.message, error.code, error.will_retry) == ("high demand", "internalServerError", False)
    assert bundle.of("turn_failed", t4)[0].error_message == t4.error_message

    items = [i.item for i in bundle.of("item_completed", t2)]
    command, reasoning, reply = items
    assert command.kind == pb.ITEM_KIND_COMMAND_EXECUTION and command.item_id == "call_2"
    assert command.command == "/bin/bash -lc 'echo hi'" and command.cwd == "/home/me/my project"
    assert command.HasField("exit_code") and command.exit_code == 0 and command.aggregated_output == "hi\n"
    assert command.status == "completed" and json.loads(command.raw_json)["type"] == "CommandExecution"
    assert (reasoning.kind, reasoning.text) == (pb.ITEM_KIND_REASONING, "the tool worked")
    assert (reply.kind, reply.text, reply.item_id) == (pb.ITEM_KIND_AGENT_MESSAGE, "Done: hi", "msg_3")
    assert json.loads(reply.raw_json) == REPLY_2


def test_history_items_are_the_model_visible_items_verbatim_and_nothing_codex_writes_itself(bundle: Bundle) -> None:
    history = bundle.of("history_item")
    assert [json.loads(h.raw_json) for h in history] == [without_bookkeeping(i) for i in VISIBLE]
    assert [h.raw_json for h in history] == [json.dumps(without_bookkeeping(i)) for i in VISIBLE]
    text = json.dumps([h.raw_json for h in history])
    assert "environment_context" not in text and "AGENTS.md" not in text and "developer" not in text
    assert PASSTHROUGH not in text
    by_turn = {t.turn_id: i for i, t in enumerate(bundle.turns)}
    assert [by_turn[h.turn_id] for h in history] == [0, 0, 1, 1, 1, 1, 1, 2, 2, 3]
    assert [e.turn_id for e in bundle.events if e.body.WhichOneof("kind") == "history_item"] == [
        h.turn_id for h in history
    ]
    R = pb
    assert [h.role for h in history] == [
        R.HISTORY_ITEM_ROLE_INPUT,
        R.HISTORY_ITEM_ROLE_OUTPUT,
        R.HISTORY_ITEM_ROLE_INPUT,
        R.HISTORY_ITEM_ROLE_TOOL_CALL,
        R.HISTORY_ITEM_ROLE_TOOL_OUTPUT,
        R.HISTORY_ITEM_ROLE_OUTPUT,
        R.HISTORY_ITEM_ROLE_OUTPUT,
        R.HISTORY_ITEM_ROLE_INPUT,
        R.HISTORY_ITEM_ROLE_INPUT,
        R.HISTORY_ITEM_ROLE_INPUT,
    ]
    assert history[3].text == 'exec_command({"cmd": "echo hi"})' and history[4].text == OUTPUT["output"]


def test_the_worker_rebuilds_exactly_the_threads_model_visible_history(bundle: Bundle) -> None:
    """What the Codex runtime is handed when the imported session's next turn runs: Resume
    sends the log (no snapshot), `history_from_resume` rebuilds it, `history_to_raw` gives
    Codex each item."""
    rebuilt = history_from_resume([wpb.ResumeResponse(events=bundle.events)], skip_turn_id="trn_next")
    assert [history_to_raw(h) for h in rebuilt] == [without_bookkeeping(i) for i in VISIBLE]
    assert [h.turn_id for h in rebuilt] == [h.turn_id for h in bundle.of("history_item")]


def test_items_written_outside_a_turn_go_with_the_next_turn_or_else_the_last(tmp_path: pathlib.Path) -> None:
    before = message("user", "history a fork started from", "msg_f")
    after = message("assistant", "written after the last turn", "msg_z")
    lines = [
        meta(),
        item(before),
        started("t1"),
        item(message("user", "hi", "msg_u")),
        event("task_complete", turn_id="t1"),
        token_count(1, 1),  # outside a turn: no turn's usage
        item(after),
    ]
    bundle = Bundle(bundle_from_rollout(write(tmp_path / "r.jsonl", lines)))
    [turn] = bundle.turns
    assert turn.input == "hi" and turn.state == pb.TURN_STATE_COMPLETED and not turn.HasField("usage")
    assert [json.loads(h.raw_json)["id"] for h in bundle.of("history_item")] == ["msg_f", "msg_u", "msg_z"]
    assert bundle.kinds(turn)[-1] == "turn_completed" and bundle.session.title == "hi"


def test_a_turn_the_file_ends_inside_is_interrupted_and_an_empty_turn_is_left_out(tmp_path: pathlib.Path) -> None:
    lines = [
        meta(),
        started("t0"),  # Codex context only: nothing the model sees from the user
        item(CONTEXT[1]),
        event("task_complete", turn_id="t0"),
        started("t1"),
        item(message("user", "first\n\n  " + "word " * 40, "msg_1")),
        started("t2"),  # t1 never ended
        item(message("user", "second", "msg_2")),
        item(message("assistant", "partial answer", "msg_3")),
    ]
    bundle = Bundle(bundle_from_rollout(write(tmp_path / "r.jsonl", lines)))
    t1, t2 = bundle.turns
    assert (t1.state, t1.error_message) == (
        pb.TURN_STATE_INTERRUPTED,
        "Codex started another turn before this one ended",
    )
    assert (t2.state, t2.error_message) == (pb.TURN_STATE_INTERRUPTED, "the rollout ends before this turn did")
    assert t2.final_message == "partial answer" and bundle.kinds(t2)[-1] == "turn_interrupted"
    assert bundle.session.title == "first"
    assert bundle.end["turns"] == 2


def test_a_long_first_line_makes_a_title_cut_like_the_control_planes(tmp_path: pathlib.Path) -> None:
    text = "  " + "x" * 150 + "\nsecond line"
    lines = [meta(), started("t1"), item(message("user", text, "m")), event("task_complete", turn_id="t1")]
    bundle = Bundle(bundle_from_rollout(write(tmp_path / "r.jsonl", lines)))
    assert bundle.session.title == "x" * 99 + "\u2026" and bundle.turns[0].input == text


def test_the_runtime_can_be_named(tmp_path: pathlib.Path) -> None:
    data = bundle_from_rollout(write(tmp_path / "r.jsonl", thread_lines()), runtime="codex-gpu")
    assert Bundle(data).session.runtime == "codex-gpu"


# -- refusals -----------------------------------------------------------------------------------


def refused(tmp_path: pathlib.Path, lines: list[Any] | bytes) -> RolloutError:
    path = tmp_path / "r.jsonl"
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        write(path, lines)
    with pytest.raises(RolloutError) as caught:
        bundle_from_rollout(path)
    return caught.value


def test_a_version_outside_the_supported_range_is_refused_on_line_1(tmp_path: pathlib.Path) -> None:
    assert SUPPORTED_CLI_VERSIONS == ((0, 169, 0), (0, 170, 0))
    for version in ("0.150.0", "0.170.0", "1.0.0"):
        error = refused(tmp_path, [meta(version), *thread_lines()[1:]])
        assert error.line == 1
        assert str(error).startswith(f"line 1: rollout of Codex CLI {version} is not supported")
        assert ">=0.169.0,<0.170.0" in str(error)
    error = refused(tmp_path, [line("session_meta", {"id": THREAD}), *thread_lines()[1:]])
    assert error.line == 1 and "no Codex CLI version" in str(error)
    assert Bundle(bundle_from_rollout(write(tmp_path / "ok.jsonl", [meta("0.169.7-alpha.1"), *thread_lines()[1:]])))


def test_a_line_that_is_not_json_is_refused_with_its_number(tmp_path: pathlib.Path) -> None:
    lines: list[Any] = thread_lines()
    lines[6] = '{"timestamp": "2026-12-05T10:00:00Z", "type": "response_item", "payload": {'
    error = refused(tmp_path, lines)
    assert error.line == 7 and str(error).startswith("line 7: not JSON: ")
    # A last line cut short says so.
    data = write(tmp_path / "cut.jsonl", thread_lines()).read_bytes()[:-20]
    error = refused(tmp_path, data)
    assert error.line == len(thread_lines()) and "the file ends mid-line" in str(error)
    error = refused(tmp_path, json.dumps(meta()).encode() + b"\n\xff\xfe\n")
    assert error.line == 2 and str(error).startswith("line 2: not UTF-8 text")


def test_a_line_of_the_wrong_shape_is_refused_with_its_number(tmp_path: pathlib.Path) -> None:
    for wrong in (
        [1, 2],
        {"timestamp": "2026-12-05T10:00:00Z", "type": "event_msg"},
        {"timestamp": 5, "type": "event_msg", "payload": {}},
        {"timestamp": "2026-12-05T10:00:00Z", "type": "event_msg", "payload": "task_started"},
    ):
        lines: list[Any] = thread_lines()
        lines[2] = wrong
        error = refused(tmp_path, lines)
        assert error.line == 3 and str(error).startswith("line 3: not a Codex rollout line: expected an object with")
    lines = thread_lines()
    lines[4] = {**lines[4], "timestamp": "yesterday"}
    error = refused(tmp_path, lines)
    assert error.line == 5 and "'yesterday' is not an RFC 3339 time" in str(error)


def test_a_rollout_must_start_with_its_session_meta(tmp_path: pathlib.Path) -> None:
    error = refused(tmp_path, thread_lines()[1:])
    assert error.line == 1 and "starts with a session_meta line; this one is 'event_msg'" in str(error)
    # Blank lines are skipped, before it too.
    data = bundle_from_rollout(write(tmp_path / "blank.jsonl", ["", *thread_lines()]))
    assert Bundle(data).end["turns"] == 4


def test_an_empty_file_is_refused(tmp_path: pathlib.Path) -> None:
    for data in (b"", b"\n", b"  \n\n"):
        error = refused(tmp_path, data)
        assert error.line == 1 and str(error) == (
            "line 1: the file is empty; a Codex rollout starts with a session_meta line"
        )


def test_a_compacted_or_rolled_back_thread_is_refused_where_it_happened(tmp_path: pathlib.Path) -> None:
    lines = thread_lines()
    compacted = [*lines[:12], line("compacted", {"message": "summary", "replacement_history": []}), *lines[12:]]
    error = refused(tmp_path, compacted)
    assert error.line == 13 and "compacted" in str(error) and "not supported" in str(error)
    rolled_back = [*lines, event("thread_rolled_back", num_turns=1)]
    error = refused(tmp_path, rolled_back)
    assert error.line == len(rolled_back) and "rolled back" in str(error)


def test_a_rollout_with_no_turn_is_refused(tmp_path: pathlib.Path) -> None:
    error = refused(tmp_path, [meta(), item(USER_1)])
    assert error.line == 0 and "no turn" in str(error)
    error = refused(tmp_path, [meta(), started("t0"), item(CONTEXT[0]), event("task_complete", turn_id="t0")])
    assert error.line == 0 and "added anything to the model-visible history" in str(error)


# -- finding a thread's rollout ----------------------------------------------------------------


def test_find_rollout_finds_the_threads_file_or_says_why_not(tmp_path: pathlib.Path, monkeypatch) -> None:
    home = tmp_path / "codex-home"
    with pytest.raises(RolloutError, match="no sessions/ folder"):
        find_rollout(home, THREAD)
    day = home / "sessions" / "2026" / "12" / "05"
    day.mkdir(parents=True)
    with pytest.raises(RolloutError, match=f"no rollout of thread {THREAD}") as caught:
        find_rollout(home, THREAD)
    assert caught.value.line == 0 and not str(caught.value).startswith("line")
    path = day / f"rollout-2026-12-05T10-00-00-{THREAD}.jsonl"
    path.write_text("{}\n")
    (day / "rollout-2026-12-05T10-00-00-01a2489b-0000-7043-977f-cefbbf73ecea.jsonl").write_text("{}\n")
    assert find_rollout(home, THREAD) == path
    (home / "archived_sessions").mkdir()
    archived = home / "archived_sessions" / f"rollout-2026-12-04T10-00-00-{THREAD}.jsonl"
    archived.write_text("{}\n")
    with pytest.raises(RolloutError, match="has 2 rollout files"):
        find_rollout(home, THREAD)
    path.unlink()
    assert find_rollout(home, THREAD) == archived
    with pytest.raises(RolloutError, match="is not a Codex thread id"):
        find_rollout(home, "*")
    other = "01a2489b-1111-7043-977f-cefbbf73ecea"
    (day / f"rollout-2026-12-05T10-00-00-{other}.jsonl.zst").write_bytes(b"")
    with pytest.raises(RolloutError, match="compressed"):
        find_rollout(home, other)

    monkeypatch.setenv("CODEX_HOME", str(home))
    assert default_codex_home() == home
    monkeypatch.delenv("CODEX_HOME")
    assert default_codex_home() == pathlib.Path.home() / ".codex"
