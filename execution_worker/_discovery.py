"""Runtime discovery: which runtimes this installation offers, by name.

The built-ins (`shell`, `script`, and `codex`, `claude` and `acp`, imported on first use) plus every
factory registered under the `tether.runtimes` entry point group. This is the one module that
imports the runtimes, so that the plugin API (`runtime.py`) never has to.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tether.execution_worker._script import ScriptRuntime
from tether.execution_worker._shell import ShellRuntime
from tether.execution_worker.runtime import (
    ENTRY_POINT_GROUP,
    Portability,
    Runtime,
    RuntimeFactory,
    declaring_portability,
    honouring_output_schema,
)

if TYPE_CHECKING:
    from tether.execution_worker._acp_settings import AcpSettings
    from tether.execution_worker._claude_settings import ClaudeSettings
    from tether.execution_worker._codex_settings import CodexSettings

_log = logging.getLogger(__name__)


@honouring_output_schema  # Codex takes it as turn/start's outputSchema
def codex_runtime(settings: CodexSettings | None = None) -> Runtime:
    """The built-in Codex runtime (imported on first use: a shell-only worker never loads it)."""
    from tether.execution_worker._codex import CodexRuntime

    return CodexRuntime(settings)


@declaring_portability(Portability.HISTORY)  # Claude's messages, written back as its transcript
def claude_runtime(settings: ClaudeSettings | None = None) -> Runtime:
    """The built-in Claude Code runtime (imported on first use, like codex)."""
    from tether.execution_worker._claude import ClaudeRuntime

    return ClaudeRuntime(settings)


@declaring_portability(Portability.NONE)  # until the worker probes its agent (_acp_check.AcpRuntimeFactory)
def acp_runtime(settings: AcpSettings | None = None) -> Runtime:
    """The built-in ACP runtime, for the agent `settings.command` (imported on first use). The
    worker replaces it with an `AcpRuntimeFactory` probed at start, which declares how the
    agent's sessions move."""
    from tether.execution_worker._acp import AcpRuntime, AcpSettings

    return AcpRuntime(settings if settings is not None else AcpSettings())


def _builtin_runtimes() -> dict[str, RuntimeFactory]:
    return {
        "shell": ShellRuntime,
        "codex": codex_runtime,
        "script": ScriptRuntime,
        "claude": claude_runtime,
        "acp": acp_runtime,
    }


def discover_runtimes() -> dict[str, RuntimeFactory]:
    """Every runtime this installation offers: built-ins plus `tether.runtimes` entry points.

    A plugin that fails to load is logged and skipped rather than taking the worker down.
    """
    runtimes = _builtin_runtimes()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in runtimes:
            continue  # built-ins win: a plugin must not silently replace "shell"
        try:
            runtimes[ep.name] = ep.load()
        except Exception:
            _log.exception("runtime plugin %r (%s) failed to load; skipping it", ep.name, ep.value)
    return runtimes


def select_runtimes(names: list[str] | tuple[str, ...]) -> dict[str, RuntimeFactory]:
    """The factories for `names`; raises `LookupError` naming the available ones."""
    available = discover_runtimes()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise LookupError(f"unknown runtime {', '.join(map(repr, unknown))}; available: {', '.join(sorted(available))}")
    return {n: available[n] for n in names}


def check_runtimes(runtimes: Mapping[str, RuntimeFactory]) -> None:
    """Fail early on an empty runtime table (a worker with nothing to run is a config error)."""
    if not runtimes:
        raise ValueError("a worker needs at least one runtime")
