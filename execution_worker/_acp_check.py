"""The ACP agent probed once when the worker starts: whether it can work here, and how its
sessions move.

`probe_agent()` runs the agent the way a session does (its command, `--acp-env`, a state
directory of its own when `--acp-state-dir-env` is given) in a scratch directory, asks
`initialize`, then `session/new`: the step at which an agent without credentials answers ACP's
"auth required". It finds the mistakes that would otherwise fail every turn (no command, no
binary, an agent that does not speak ACP or another protocol version, no credentials) and says
in one line what to do. From `initialize`'s `agentCapabilities.loadSession` it decides the
runtime's portability, which the factory then declares at Register.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.execution_worker._acp_rpc import (
    AUTH_REQUIRED,
    METHOD_NOT_FOUND,
    PROTOCOL_VERSION,
    AcpError,
    AcpRpcError,
    initialize_params,
    spawn_agent,
)
from tether.execution_worker._acp_settings import AcpSettings
from tether.execution_worker.runtime import Portability, Runtime

PROBE_EXIT_GRACE_S = 2.0


class AcpUnavailable(Exception):
    """The worker offers nothing but acp, and the agent cannot run here; str() says what to do."""


@dataclass(frozen=True)
class AcpProbe:
    """What the probe found: `problem` (one line with the fix; None when the agent works), and
    the portability its sessions have, with the reason."""

    problem: str | None
    portability: Portability = Portability.NONE
    portability_reason: str = "the agent was not probed"
    agent: str = ""


def _find_binary(name: str) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


def decide_portability(settings: AcpSettings, capabilities: dict[str, Any]) -> tuple[Portability, str]:
    """The portability of the agent's sessions, from `initialize`'s agentCapabilities."""
    if not capabilities.get("loadSession"):
        return Portability.NONE, "the agent does not offer session/load"
    if not settings.state_dir_env:
        return (
            Portability.NONE,
            "the agent offers session/load but its state is not carried (no --acp-state-dir-env)",
        )
    return (
        Portability.STATE,
        f"the agent offers session/load; its state directory (${settings.state_dir_env}) moves in snapshots",
    )


async def probe_agent(settings: AcpSettings, scratch: Path) -> AcpProbe:
    """Run the agent once in `scratch` and ask it `initialize` and `session/new`."""
    if not settings.command:
        return AcpProbe("no acp agent command: pass --acp-command (or set TETHER_ACP_COMMAND)")
    binary = settings.command[0]
    if _find_binary(binary) is None:
        where = "found" if os.sep in binary else "on PATH"
        return AcpProbe(f"no acp agent binary {binary!r} {where}: install the agent or fix --acp-command")
    by_hand = f"run `{settings.shown()}` by hand to see why"
    workspace = scratch / "workspace"
    shutil.rmtree(scratch, ignore_errors=True)
    workspace.mkdir(parents=True)
    env = {**os.environ, **settings.env}
    if settings.state_dir_env:
        state = scratch / "state"
        state.mkdir()
        if settings.state_seed is not None and settings.state_seed.is_dir():
            for path in settings.state_seed.iterdir():
                if path.is_file():
                    shutil.copy2(path, state / path.name)
        env[settings.state_dir_env] = str(state)
    try:
        conn = await spawn_agent(
            settings.command,
            cwd=workspace,
            env=env,
            name="acp probe",
            request_timeout_s=settings.request_timeout_s,
            on_notification=lambda method, params: None,
            on_request=_refuse,
            on_exit=lambda: None,
        )
    except AcpError as error:
        return AcpProbe(f"{error}: install the agent or fix --acp-command")
    conn.closing = True  # an exit is this check's answer, not something to log
    try:
        try:
            init = await conn.request("initialize", initialize_params()) or {}
        except AcpError as error:
            return AcpProbe(f"the acp agent `{settings.shown()}` did not answer initialize: {error}: {by_hand}")
        agent_info = init.get("agentInfo") or {}
        agent = f"{agent_info.get('name') or binary} {agent_info.get('version') or ''}".strip()
        if init.get("protocolVersion") != PROTOCOL_VERSION:
            return AcpProbe(
                f"the acp agent {agent} speaks ACP version {init.get('protocolVersion')!r}, tether speaks "
                f"{PROTOCOL_VERSION}: use an agent release for ACP v{PROTOCOL_VERSION}"
            )
        try:
            await conn.request("session/new", {"cwd": str(workspace), "mcpServers": []})
        except AcpRpcError as error:
            if error.code == AUTH_REQUIRED:
                return AcpProbe(f"the acp agent {agent} has no credentials: {_login_hint(init)}")
            return AcpProbe(f"the acp agent {agent} could not start a session: {error}: {by_hand}")
        except AcpError as error:
            return AcpProbe(f"the acp agent {agent} could not start a session: {error}: {by_hand}")
        portability, reason = decide_portability(settings, dict(init.get("agentCapabilities") or {}))
        return AcpProbe(None, portability, reason, agent)
    finally:
        await conn.close(PROBE_EXIT_GRACE_S)


async def _refuse(method: str, params: dict[str, Any]) -> Any:
    raise AcpRpcError(method, METHOD_NOT_FOUND, "tether: the probe serves nothing")


def _login_hint(init: dict[str, Any]) -> str:
    """The fix for an agent without credentials, from the auth methods it lists."""
    env_vars = [
        str(var.get("name"))
        for method in init.get("authMethods") or []
        if isinstance(method, dict)
        for var in method.get("vars") or []
        if isinstance(var, dict) and var.get("name")
    ]
    others = [
        str(method.get("name") or method.get("id"))
        for method in init.get("authMethods") or []
        if isinstance(method, dict) and not method.get("vars")
    ]
    hints = []
    if env_vars:
        hints.append("pass " + " or ".join(f"--acp-env {name}=..." for name in env_vars))
    if others:
        hints.append("log the agent in as the worker's user (" + ", ".join(others) + ")")
    return "; or ".join(hints) or "log the agent in as the worker's user"


class AcpRuntimeFactory:
    """The `acp` runtime factory of a worker: its settings, and the portability the probe at
    worker start found (`runtime_portability` reads `portability`; NONE until probed)."""

    def __init__(self, settings: AcpSettings) -> None:
        self.settings = settings
        self.portability = Portability.NONE
        self.portability_reason = "the agent was not probed"

    async def probe(self, scratch: Path) -> str | None:
        """Probe the agent; the problem in one line (the runtime must then not be offered), or
        None, with `portability` set."""
        found = await probe_agent(self.settings, scratch)
        if found.problem is None:
            self.portability, self.portability_reason = found.portability, found.portability_reason
        return found.problem

    def __call__(self) -> Runtime:
        from tether.execution_worker._acp import AcpRuntime  # loaded on first use

        return AcpRuntime(self.settings, self.portability, self.portability_reason)
