"""Tether execution worker: dials out to the control plane, runs leased sessions' turns in a
runtime (the built-in `shell`, `codex` and `script`, or plugins from the `tether.runtimes` entry
point group), and streams their events back.

Public surface:

- `Worker`, `WorkerSettings`: run a worker in-process (``await Worker(settings).run()``).
- `Runtime` and its dataclasses (`HistoryItem`, `Output`, `TurnCompleted`, ...): the interface a
  runtime plugin implements, with the events a runtime may yield (items, deltas, token usage,
  pending requests, history items); `ShellRuntime`, `ScriptRuntime` and `CodexRuntime` (with `CodexSettings`)
  are the built-in ones.
- `discover_runtimes()`: every runtime this installation offers, by name.
"""

from tether.execution_worker._codex import CodexRuntime, CodexSettings
from tether.execution_worker._runtime import (
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
    discover_runtimes,
    new_request_id,
)
from tether.execution_worker._script import ScriptRuntime
from tether.execution_worker._settings import WorkerSettings, resolve_worker_id
from tether.execution_worker._shell import ShellRuntime
from tether.execution_worker._worker import Worker

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
    "new_request_id",
    "Output",
    "OutputStream",
    "RawEvent",
    "RequestKind",
    "RequestOpened",
    "resolve_worker_id",
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
