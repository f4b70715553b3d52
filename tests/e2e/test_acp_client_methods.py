"""The client side of ACP as an agent reaches it: the runtime serves `fs/*` and `terminal/*` over
the protocol to a real agent process (the scripted `tests.helpers.acp_fake_agent`), inside the
session's workspace only; and an agent without `session/load` is probed as `none`."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys

import pytest

from tests.helpers.processes import ROOT
from tether.execution_worker._acp_check import AcpRuntimeFactory
from tether.execution_worker._acp_settings import AcpSettings
from tether.execution_worker.runtime import (
    ItemCompleted,
    ItemKind,
    Portability,
    TurnCompleted,
)


@pytest.fixture
async def runtime(tmp_path: pathlib.Path):
    factory = AcpRuntimeFactory(
        AcpSettings(command=(sys.executable, "-m", "tests.helpers.acp_fake_agent"), env={"PYTHONPATH": str(ROOT)})
    )
    assert await factory.probe(tmp_path / "check") is None
    assert factory.portability is Portability.NONE and "does not offer session/load" in factory.portability_reason
    rt = factory()
    await rt.start("ses_fake", tmp_path, [])
    yield rt
    await rt.close()


async def said(runtime, text: str, turn_id: str = "trn_1") -> tuple[str, list]:
    """What the agent said in one turn, and the turn's events."""
    events = []
    async with asyncio.timeout(30):
        async for event in runtime.run_turn(turn_id, text):
            events.append(event)
    assert isinstance(events[-1], TurnCompleted), events[-1]
    messages = [e.item.text for e in events if isinstance(e, ItemCompleted) and e.item.kind is ItemKind.AGENT_MESSAGE]
    return "".join(messages), events


async def test_the_agent_reads_and_writes_files_in_the_workspace_only(runtime, tmp_path):
    workspace = runtime.workspace
    (workspace / "inside.txt").write_text("inside text")
    (tmp_path / "secret.txt").write_text("outside text")
    (workspace / "escape.txt").symlink_to(tmp_path / "secret.txt")
    assert (await said(runtime, "READ inside.txt"))[0] == "content: inside text"
    assert (await said(runtime, f"READ {workspace / 'inside.txt'}"))[0] == "content: inside text"
    for path in ("../../../secret.txt", str(tmp_path / "secret.txt"), "escape.txt"):
        text, _ = await said(runtime, f"READ {path}")
        assert text.startswith("error: tether: ") and "outside the session's workspace" in text, text
    assert (await said(runtime, "WRITE made/new.txt hello"))[0] == "wrote"
    assert (workspace / "made" / "new.txt").read_text() == "hello"
    text, _ = await said(runtime, "WRITE escape.txt overwritten")
    assert "outside the session's workspace" in text
    assert (tmp_path / "secret.txt").read_text() == "outside text"


async def test_a_terminal_command_runs_in_the_workspace_and_shows_as_a_command_item(runtime):
    text, events = await said(runtime, "TERM pwd; echo done")
    workspace = str(runtime.workspace.resolve())
    assert text == f"ran: {workspace}\ndone"
    (command,) = [e.item for e in events if isinstance(e, ItemCompleted) and e.item.kind is ItemKind.COMMAND_EXECUTION]
    assert command.command == "pwd; echo done" and command.status == "completed"
    assert command.aggregated_output == f"{workspace}\ndone\n"


async def test_the_agent_is_told_what_the_client_serves(runtime):
    text, _ = await said(runtime, "plain words")
    assert text == "echo: plain words"
    caps, _ = await said(runtime, "CAPS", "trn_2")
    assert json.loads(caps) == {"fs": {"readTextFile": True, "writeTextFile": True}, "terminal": True}
    assert runtime.runtime_metadata()["agent"] == {"name": "fake"}
    assert runtime.runtime_metadata()["portability"] == "none" and "state" not in runtime.runtime_metadata()
