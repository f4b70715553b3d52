"""The real Codex CLI's workspace moves with its session: a turn on worker A writes a file and
edits a tracked file of a git repository in the workspace; A is SIGKILLed; on worker B, which
never saw the session, `cat` and `git status` / `git diff` show exactly what A showed."""

from __future__ import annotations

import signal

import pytest

from tests.e2e.test_codex_e2e import codex_worker, cp, events_of, finished, items, mock  # noqa: F401 (fixtures)
from tests.helpers.codex_mock import codex_bin
from tether import sdk
from tether.v1 import resources_pb2 as pb

pytestmark = pytest.mark.skipif(
    codex_bin() is None, reason="the pinned Codex CLI is not installed (run `make test`, which installs it with npm)"
)

SETUP = (
    "git init -q && git config user.email t@example.com && git config user.name t"
    " && printf 'one\\n' > tracked.txt && git add tracked.txt && git commit -qm init"
    " && printf 'two\\n' >> tracked.txt && printf 'proof\\n' > proof.txt"
)
LOOK = "cat proof.txt && git status --porcelain && git diff"
# Codex may write (no sandbox) and asks nothing (no approvals): the test is about the files.
FREE = ("--codex-sandbox", "danger-full-access", "--codex-approval-policy", "never")


async def _command_output(client: sdk.AsyncClient, session_id: str, text: str) -> tuple[sdk.Turn, str]:
    turn = await client.send_input(session_id, f"RUN: {text}")
    done = await finished(client, session_id, turn.turn_id)
    assert done.state == sdk.TurnState.COMPLETED, done.error_message
    commands = [
        i for i in items(await events_of(client, session_id, turn.turn_id)) if i.kind == pb.ITEM_KIND_COMMAND_EXECUTION
    ]
    assert commands and commands[-1].exit_code == 0, commands
    return done, commands[-1].aggregated_output


async def test_a_codex_workspace_with_a_git_repository_survives_the_kill_of_its_worker(cp, procs, tmp_path, mock):  # noqa: F811
    a = codex_worker(procs, cp, tmp_path / "wa", "wa", mock, *FREE)
    async with sdk.AsyncClient(cp.target) as client:
        s = await client.create_session("codex")
        done, _ = await _command_output(client, s.session_id, SETUP)
        assert done.worker_id == "wa"
        _, on_a = await _command_output(client, s.session_id, LOOK)
        assert on_a.startswith("proof\n M tracked.txt\n?? proof.txt\n") and "+two" in on_a, on_a
        await client.create_snapshot(s.session_id, timeout_s=30)
        a.send_signal(signal.SIGKILL)

        codex_worker(procs, cp, tmp_path / "wb", "wb", mock, *FREE)
        done, on_b = await _command_output(client, s.session_id, LOOK)
        assert done.worker_id == "wb"
        assert on_b == on_a  # the same files, the same repository state, the same diff
        restored = [e for e in await events_of(client, s.session_id, done.turn_id) if e.kind == "workspace_restored"]
        assert len(restored) == 1 and restored[0].workspace_restored.files_written > 3  # .git came too
