"""Tether execution worker: dials out to the control plane, runs leased sessions' turns in a
runtime (the built-in `shell`, `codex` and `script`, or plugins from the `tether.runtimes` entry
point group), and streams their events back.

Public surface:

- `Worker`, `WorkerSettings`: run a worker in-process (``await Worker(settings).run()``).
- `Runtime` and its dataclasses (`HistoryItem`, `Output`, `TurnCompleted`, ...): the interface a
  runtime plugin implements, with the events a runtime may yield (items, deltas, token usage,
  pending requests, history items). They live in `tether.execution_worker.runtime`, the plugin
  API, which loads no runtime, no SDK and no gRPC; they are re-exported here.
- `ShellRuntime`, `ScriptRuntime` and `CodexRuntime` (with `CodexSettings`): the built-in runtimes.
- `discover_runtimes()`: every runtime this installation offers, by name.

Only the plugin API is imported eagerly: the worker, the runtimes and gRPC load on first use
of their names, so `import tether.execution_worker.runtime` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tether.execution_worker.runtime import (
    ENTRY_POINT_GROUP,
    AgentError,
    DeltaKind,
    FileChange,
    HistoryAppended,
    HistoryItem,
    HistoryRole,
    Item,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    Output,
    OutputStream,
    Portability,
    RawEvent,
    RequestKind,
    RequestOpened,
    Runtime,
    RuntimeEvent,
    RuntimeFactory,
    TokenUsage,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    declaring_portability,
    honouring_output_schema,
    honours_output_schema,
    new_request_id,
    runtime_portability,
)

if TYPE_CHECKING:
    from tether.execution_worker._codex import CodexRuntime
    from tether.execution_worker._codex_settings import CodexSettings
    from tether.execution_worker._discovery import discover_runtimes
    from tether.execution_worker._script import ScriptRuntime
    from tether.execution_worker._settings import WorkerSettings, resolve_worker_id
    from tether.execution_worker._shell import ShellRuntime
    from tether.execution_worker._worker import Worker

# Name -> the private module that defines it, imported on first access.
_LAZY = {
    "CodexRuntime": "_codex",
    "CodexSettings": "_codex_settings",
    "discover_runtimes": "_discovery",
    "ScriptRuntime": "_script",
    "ShellRuntime": "_shell",
    "WorkerSettings": "_settings",
    "resolve_worker_id": "_settings",
    "Worker": "_worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ENTRY_POINT_GROUP",
    "AgentError",
    "CodexRuntime",
    "CodexSettings",
    "DeltaKind",
    "discover_runtimes",
    "FileChange",
    "HistoryAppended",
    "HistoryItem",
    "HistoryRole",
    "Item",
    "ItemCompleted",
    "ItemDelta",
    "ItemKind",
    "ItemStarted",
    "declaring_portability",
    "honouring_output_schema",
    "honours_output_schema",
    "new_request_id",
    "Output",
    "OutputStream",
    "Portability",
    "RawEvent",
    "RequestKind",
    "RequestOpened",
    "resolve_worker_id",
    "runtime_portability",
    "Runtime",
    "RuntimeEvent",
    "RuntimeFactory",
    "ScriptRuntime",
    "ShellRuntime",
    "TokenUsage",
    "TurnCompleted",
    "TurnFailed",
    "TurnInterrupted",
    "Worker",
    "WorkerSettings",
]
