"""Tether execution worker: dials out to the control plane, runs leased sessions' turns in a
runtime (the built-in `shell`, or plugins from the `tether.runtimes` entry point group), and
streams their events back.

Public surface:

- `Worker`, `WorkerSettings`: run a worker in-process (``await Worker(settings).run()``).
- `Runtime` and its dataclasses (`HistoryItem`, `Output`, `TurnCompleted`, ...): the interface a
  runtime plugin implements; `ShellRuntime` is the built-in one.
- `discover_runtimes()`: every runtime this installation offers, by name.
"""

from execution_worker._runtime import (
    ENTRY_POINT_GROUP,
    HistoryItem,
    HistoryRole,
    Output,
    OutputStream,
    Runtime,
    RuntimeEvent,
    RuntimeFactory,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    discover_runtimes,
)
from execution_worker._settings import WorkerSettings, resolve_worker_id
from execution_worker._shell import ShellRuntime
from execution_worker._worker import Worker

__all__ = [
    "ENTRY_POINT_GROUP",
    "HistoryItem",
    "HistoryRole",
    "Output",
    "OutputStream",
    "Runtime",
    "RuntimeEvent",
    "RuntimeFactory",
    "ShellRuntime",
    "TurnCompleted",
    "TurnFailed",
    "TurnInterrupted",
    "Worker",
    "WorkerSettings",
    "discover_runtimes",
    "resolve_worker_id",
]
