"""Rendering events for a person (`Transcript`, used by `tether session`), on constructed events."""

from __future__ import annotations

import json

import click

from tests.helpers.fake_session_service import _AGENT, _COMMAND, _FILES, _completed, _delta, _event, _opened, _started
from tether.sdk import _convert
from tether.sdk._transcript import Transcript
from tether.v1 import resources_pb2

# -- rendering events for a person ------------------------------------------------------


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
