"""The `tether session` CLI against the in-process fake `SessionService`
(tests/helpers/fake_session_service.py): output, exit codes, errors, an agent turn rendered, and
`events --json`.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from tether.sdk.cli import session as session_cli


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
