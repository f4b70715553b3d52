"""The probe at worker start against real agents: codex-acp working, without credentials, and
commands that are not ACP agents; each problem in one line naming the fix."""

from __future__ import annotations

import pathlib
import sys

from tests.helpers.acp_agent import command, needs_codex_acp, settings_for, write_seed
from tests.helpers.codex_mock import MockResponses
from tether.execution_worker._acp_check import AcpRuntimeFactory, probe_agent
from tether.execution_worker._acp_settings import AcpSettings
from tether.execution_worker.runtime import Portability


@needs_codex_acp
async def test_codex_acp_is_probed_as_state_or_none_by_what_the_worker_carries(tmp_path):
    with MockResponses() as mock:
        carried = AcpRuntimeFactory(settings_for(mock, tmp_path))
        assert await carried.probe(tmp_path / "check") is None
        assert carried.portability is Portability.STATE
        kept = AcpRuntimeFactory(settings_for(mock, tmp_path, carry_state=False))
        assert await kept.probe(tmp_path / "check2") is None
        assert kept.portability is Portability.NONE and "--acp-state-dir-env" in kept.portability_reason
        assert not mock.requests  # the probe never reaches the model


@needs_codex_acp
async def test_codex_acp_without_credentials_is_not_offered(tmp_path, monkeypatch):
    for name in ("OPENAI_API_KEY", "CODEX_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()  # no login, the default (OpenAI) provider
    found = await probe_agent(AcpSettings(command=command(), env={"CODEX_HOME": str(home)}), tmp_path / "check")
    assert found.problem is not None and "\n" not in found.problem
    assert "has no credentials" in found.problem and "--acp-env OPENAI_API_KEY=..." in found.problem
    # With a key (never used: the probe reaches no model) it is offered.
    with MockResponses() as mock:
        write_seed(mock, home)
    keyed = AcpSettings(command=command(), env={"CODEX_HOME": str(home), "OPENAI_API_KEY": "dummy"})
    assert (await probe_agent(keyed, tmp_path / "check")).problem is None


async def test_commands_that_are_not_acp_agents_are_not_offered(tmp_path: pathlib.Path):
    nothing = await probe_agent(AcpSettings(), tmp_path / "c")
    assert nothing.problem is not None and "--acp-command" in nothing.problem
    missing = await probe_agent(AcpSettings(command=(str(tmp_path / "absent"),)), tmp_path / "c")
    assert missing.problem is not None and "no acp agent binary" in missing.problem
    silent = AcpSettings(command=(sys.executable, "-c", "import sys; sys.stdin.read()"), request_timeout_s=0.5)
    found = await probe_agent(silent, tmp_path / "c")
    assert found.problem is not None and "did not answer initialize" in found.problem
    other = (sys.executable, "-c", _OTHER_VERSION)
    found = await probe_agent(AcpSettings(command=other), tmp_path / "c")
    assert found.problem is not None and "speaks ACP version 99" in found.problem


# An agent of another protocol version: answers initialize with protocolVersion 99.
_OTHER_VERSION = """
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    reply = {"jsonrpc": "2.0", "id": message["id"], "result": {"protocolVersion": 99, "agentCapabilities": {}}}
    print(json.dumps(reply), flush=True)
"""
