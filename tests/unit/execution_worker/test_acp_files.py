"""The client-side fs/* and terminal/* methods an ACP agent calls: served inside the session's
workspace, and nowhere else (`..`, absolute paths and symbolic links that lead out are refused)."""

from __future__ import annotations

import os
import pathlib

import pytest

from tether.execution_worker._acp_files import Terminals, WorkspaceFiles
from tether.execution_worker._acp_rpc import INVALID_PARAMS, RESOURCE_NOT_FOUND, AcpRpcError


@pytest.fixture
def workspace(tmp_path: pathlib.Path) -> pathlib.Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (tmp_path / "secret.txt").write_text("outside\n")
    return ws


def refused(call, *args) -> AcpRpcError:
    with pytest.raises(AcpRpcError) as caught:
        call(*args)
    assert caught.value.code == INVALID_PARAMS
    return caught.value


def test_files_inside_the_workspace_are_read_and_written(workspace):
    files = WorkspaceFiles(workspace)
    assert files.write_text_file({"path": str(workspace / "deep/new.txt"), "content": "a\nb\nc\n"}) is None
    assert (workspace / "deep/new.txt").read_text() == "a\nb\nc\n"
    assert files.read_text_file({"path": str(workspace / "deep/new.txt")}) == {"content": "a\nb\nc\n"}
    assert files.read_text_file({"path": "deep/new.txt", "line": 2, "limit": 1}) == {"content": "b\n"}
    with pytest.raises(AcpRpcError) as missing:
        files.read_text_file({"path": str(workspace / "absent.txt")})
    assert missing.value.code == RESOURCE_NOT_FOUND


@pytest.mark.parametrize("path", ["../secret.txt", "{tmp}/secret.txt", "/etc/passwd", "deep/../../secret.txt"])
def test_paths_outside_the_workspace_are_refused(workspace, path):
    files = WorkspaceFiles(workspace)
    path = path.format(tmp=workspace.parent)
    error = refused(files.read_text_file, {"path": path})
    assert "outside the session's workspace" in str(error)
    refused(files.write_text_file, {"path": path, "content": "x"})
    assert (workspace.parent / "secret.txt").read_text() == "outside\n"


def test_symbolic_links_that_lead_out_are_refused(workspace):
    files = WorkspaceFiles(workspace)
    (workspace / "link.txt").symlink_to(workspace.parent / "secret.txt")
    (workspace / "linkdir").symlink_to(workspace.parent)
    for path in ("link.txt", "linkdir/secret.txt", str(workspace / "linkdir" / "secret.txt")):
        refused(files.read_text_file, {"path": path})
        refused(files.write_text_file, {"path": path, "content": "overwritten"})
    assert (workspace.parent / "secret.txt").read_text() == "outside\n"
    # A link that stays inside is followed.
    (workspace / "real.txt").write_text("inside")
    (workspace / "alias.txt").symlink_to(workspace / "real.txt")
    assert files.read_text_file({"path": "alias.txt"}) == {"content": "inside"}


def test_bad_params_are_refused(workspace):
    files = WorkspaceFiles(workspace)
    refused(files.read_text_file, {})
    refused(files.write_text_file, {"path": "a.txt"})
    refused(files.write_text_file, {"path": str(workspace), "content": "x"})


async def test_a_terminal_runs_in_the_workspace_and_reports_output_and_exit(workspace):
    terminals = Terminals(workspace, dict(os.environ))
    try:
        created = await terminals.create(
            {
                "command": "sh",
                "args": ["-c", "pwd; echo $GREETING; exit 3"],
                "env": [{"name": "GREETING", "value": "hi"}],
            }
        )
        status = await terminals.wait_for_exit(created)
        assert status == {"exitCode": 3, "signal": None}
        output = terminals.output(created)
        assert output["output"] == f"{workspace.resolve()}\nhi\n" and output["truncated"] is False
        assert output["exitStatus"] == {"exitCode": 3, "signal": None}
        await terminals.release(created)
        with pytest.raises(AcpRpcError):
            terminals.output(created)
    finally:
        await terminals.close()


async def test_a_terminal_outside_the_workspace_is_refused(workspace):
    terminals = Terminals(workspace, dict(os.environ))
    with pytest.raises(AcpRpcError) as caught:
        await terminals.create({"command": "true", "cwd": str(workspace.parent)})
    assert caught.value.code == INVALID_PARAMS and len(terminals) == 0


async def test_a_terminal_keeps_the_last_bytes_of_its_output_and_can_be_killed(workspace):
    terminals = Terminals(workspace, dict(os.environ))
    try:
        limited = await terminals.create(
            {"command": "sh", "args": ["-c", "printf 0123456789abcdef"], "outputByteLimit": 6}
        )
        await terminals.wait_for_exit(limited)
        assert terminals.output(limited)["output"] == "abcdef" and terminals.output(limited)["truncated"]
        sleeper = await terminals.create({"command": "sleep", "args": ["30"]})
        terminals.kill(sleeper)
        status = await terminals.wait_for_exit(sleeper)
        assert status == {"exitCode": None, "signal": "SIGKILL"}
    finally:
        await terminals.close()
    assert len(terminals) == 0
