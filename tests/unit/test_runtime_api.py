"""The runtime plugin API, `tether.execution_worker.runtime`: what it exports, and that a plugin
importing it loads no runtime, no worker, no SDK and no gRPC (the import-linter contract checks
the module's own imports; this checks what importing it really loads, package init included)."""

from __future__ import annotations

import json
import subprocess
import sys

import tether.execution_worker as execution_worker
from tether.execution_worker import runtime


def test_the_plugin_api_exports_the_interface_and_the_events():
    assert sorted(runtime.__all__) == sorted(
        [
            "ENTRY_POINT_GROUP",
            "TERMINAL_EVENTS",
            "AgentError",
            "DeltaKind",
            "FileChange",
            "HistoryAppended",
            "HistoryItem",
            "HistoryRole",
            "Item",
            "ItemCompleted",
            "ItemDelta",
            "ItemKind",
            "ItemStarted",
            "Output",
            "OutputStream",
            "Portability",
            "RawEvent",
            "RequestKind",
            "RequestOpened",
            "Runtime",
            "RuntimeEvent",
            "RuntimeFactory",
            "TokenUsage",
            "TurnCompleted",
            "TurnFailed",
            "TurnInterrupted",
            "declaring_portability",
            "honouring_output_schema",
            "honours_output_schema",
            "new_request_id",
            "runtime_portability",
            "session_workspace",
        ]
    )
    # The package re-exports it, and everything in its own __all__ resolves.
    for name in execution_worker.__all__:
        assert getattr(execution_worker, name) is not None, name
    assert execution_worker.Runtime is runtime.Runtime


def test_importing_the_plugin_api_loads_no_runtime_sdk_or_grpc():
    code = "import json, sys\nimport tether.execution_worker.runtime\nprint(json.dumps(sorted(sys.modules)))\n"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    heavy = [
        m
        for m in loaded
        if m == "grpc"
        or m.startswith(("grpc.", "google.protobuf", "tether.sdk", "tether.v1", "tether.execution_worker._"))
    ]
    assert heavy == []
