"""The public API is pinned: each public module's `__all__` is exactly the list below, and every
name in it resolves. Changing a public surface means changing this file, on purpose.

A module is public when no part of its dotted name starts with an underscore; a package's
`__init__` counts as the package. Every public module that defines `__all__` must be pinned
here, pinned by its own test, or listed as not pinned yet with the reason.
"""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import pathlib
import tomllib

import pytest

from tests.helpers.processes import ROOT

PINNED: dict[str, list[str]] = {
    "tether.sdk": [
        "AlreadyExistsError",
        "AsyncClient",
        "Client",
        "DEFAULT_TARGET",
        "DEFAULT_TIMEOUT_S",
        "DeadlineExceededError",
        "DeltaKind",
        "Event",
        "EventKind",
        "FailedPreconditionError",
        "FileChange",
        "HistoryItem",
        "HistoryItemRole",
        "InputPolicy",
        "InternalError",
        "InvalidArgumentError",
        "Item",
        "ItemKind",
        "LeaseLostError",
        "NotFoundError",
        "OutOfRangeError",
        "PairingCode",
        "PendingRequest",
        "PermissionDeniedError",
        "PurgeProgress",
        "RehydrationFailedError",
        "RequestAlreadyResolvedError",
        "RequestCancelledError",
        "RequestKind",
        "RequestNotFoundError",
        "RequestState",
        "ResourceExhaustedError",
        "Session",
        "SessionBusyError",
        "SessionPage",
        "SessionState",
        "Snapshot",
        "TetherError",
        "TokenUsage",
        "Turn",
        "TurnPage",
        "TurnState",
        "UnauthenticatedError",
        "UnavailableError",
        "UnimplementedError",
        "WorkerNotConnectedError",
        "WorkerStatus",
        "WorkerToken",
        "WorkspaceRestored",
    ],
    "tether.sdk.codex_import": [
        "BUNDLE_VERSION",
        "RolloutError",
        "SUPPORTED_CLI_VERSIONS",
        "bundle_from_rollout",
        "default_codex_home",
        "find_rollout",
    ],
    "tether.sdk.channel": ["OWNER_HEADER", "WithMetadata", "credential_metadata", "make_channel", "tls_hint"],
    # tether.cli composes `tether worker` from these, so they stay importable from here.
    "tether.sdk.cli": [
        "drain_worker",
        "list_worker_tokens",
        "list_workers",
        "pair",
        "revoke_worker_token",
        "session",
    ],
    "tether.cli": ["main"],
    "tether.control_plane": ["ControlPlane", "Settings", "Timings", "serve_forever"],
    "tether.control_plane.http": [
        "ALLOWED_HEADERS",
        "Console",
        "ConsoleNotBuilt",
        "EXPOSED_HEADERS",
        "HttpApp",
        "HttpServer",
        "PACKAGED_CONSOLE",
        "ServiceApp",
        "ServingGate",
        "TlsFiles",
    ],
    "tether.control_plane.observability": ["MAX_RUNTIMES", "Metrics", "metrics_asgi_app", "turn_tracer"],
    "tether.logs": ["FIELDS", "FORMATS", "JsonFormatter", "TextFormatter", "bind", "bound", "configure", "redact"],
    "tether.logs.tracing": ["TracingUnavailable", "configure", "requested"],
    "tether.control_plane.store": [
        "AccessStore",
        "DatabaseNotReady",
        "DatabaseUnreachable",
        "LoadedSession",
        "Reader",
        "SCHEMA_HEAD",
        "SchemaNotCurrent",
        "SchemaState",
        "SqlBlobStore",
        "Upgrade",
        "UpgradeFailed",
        "WriteFailed",
        "WriteSet",
        "Writer",
        "check_schema",
        "create_engine",
        "create_sqlite_writer_engine",
        "database_url",
        "describe_database",
        "ensure_schema",
        "is_sqlite",
        "lease_to_row",
        "not_current",
        "request_to_row",
        "request_update_row",
        "rows_of",
        "schema_state",
        "session_to_row",
        "session_update_row",
        "snapshot_to_row",
        "turn_to_row",
        "turn_update_row",
        "upgrade_schema",
        "worker_to_row",
    ],
    "tether.execution_worker": [
        "AgentError",
        "CodexRuntime",
        "CodexSettings",
        "DeltaKind",
        "ENTRY_POINT_GROUP",
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
        "ScriptRuntime",
        "ShellRuntime",
        "TokenUsage",
        "TurnCompleted",
        "TurnFailed",
        "TurnInterrupted",
        "Worker",
        "WorkerSettings",
        "declaring_portability",
        "discover_runtimes",
        "honouring_output_schema",
        "honours_output_schema",
        "new_request_id",
        "resolve_worker_id",
        "runtime_portability",
    ],
    "tether.execution_worker.doctor": [
        "Check",
        "Status",
        "WorkerSetup",
        "runtime_checks",
        "token_check",
        "workdir_check",
    ],
}

#: Public modules whose `__all__` another test pins.
PINNED_ELSEWHERE = {
    "tether.execution_worker.runtime": "tests/unit/test_runtime_api.py",
    "tether.control_plane.domain.hub": "tests/unit/control_plane/test_public_names.py",
    "tether.control_plane.domain.ports": "tests/unit/control_plane/test_public_names.py",
}

#: Public modules with an `__all__` that is still moving; pin each once it settles.
NOT_PINNED_YET = {
    "tether.execution_worker.cli": "the worker package is being reorganised",
    "tether.control_plane.domain.messages": "the domain is being reorganised (its names are only checked to resolve)",
}


def _public_modules_with_all() -> set[str]:
    """Public modules of the mapped packages whose source assigns `__all__` (read, not imported)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = set()
    for package, folder in config["tool"]["setuptools"]["package-dir"].items():
        if package == "tether":  # the generated tree
            continue
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(part.startswith("_") for part in parts) or not _assigns_all(path):
                continue
            found.add(".".join((package, *parts)))
    return found


def _assigns_all(path: pathlib.Path) -> bool:
    for node in ast.parse(path.read_text(), str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


@pytest.mark.parametrize("name", sorted(PINNED))
def test_all_is_pinned(name: str) -> None:
    module = importlib.import_module(name)
    assert sorted(module.__all__) == PINNED[name]
    assert len(set(module.__all__)) == len(module.__all__), "a name is listed twice"


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_exported_name_resolves(name: str) -> None:
    module = importlib.import_module(name)
    missing = [export for export in module.__all__ if not hasattr(module, export)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"


def test_every_public_module_with_all_is_accounted_for() -> None:
    known = set(PINNED) | set(PINNED_ELSEWHERE) | set(NOT_PINNED_YET)
    unaccounted = sorted(_public_modules_with_all() - known)
    assert not unaccounted, f"pin these modules' __all__ in {__file__}: {unaccounted}"


def test_the_package_ships_py_typed() -> None:
    assert importlib.resources.files("tether").joinpath("py.typed").is_file()
