"""Python SDK of Tether, a control plane for remote agent execution.

The public API is what this module exports; the `_name` modules behind it are private::

    async with sdk.AsyncClient("127.0.0.1:7670") as client:
        session = await client.create_session("shell")
        turn = await client.send_input(session.session_id, "echo hi")
        async for event in client.stream_events(session.session_id):
            ...

`Client` offers the same methods, blocking. A runtime that asks mid-turn (an approval, a
question) opens a `PendingRequest`, seen as a request_opened event and in `list_requests`;
`respond_to_request` answers it exactly once. Both clients also serve operators
(`list_workers`, `drain_worker`). Failed calls raise a `TetherError` subclass (the tree is
documented in `sdk._errors`). The `tether session` command and the `tether worker list` /
`drain` commands live in `sdk.cli`.
"""

from ._async_client import DEFAULT_TARGET, DEFAULT_TIMEOUT_S, AsyncClient
from ._errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    LeaseLostError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    RehydrationFailedError,
    RequestAlreadyResolvedError,
    RequestCancelledError,
    RequestNotFoundError,
    ResourceExhaustedError,
    SessionBusyError,
    TetherError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    WorkerNotConnectedError,
)
from ._models import (
    DeltaKind,
    Event,
    EventKind,
    FileChange,
    HistoryItem,
    HistoryItemRole,
    InputPolicy,
    Item,
    ItemKind,
    PairingCode,
    PendingRequest,
    PurgeProgress,
    RequestKind,
    RequestState,
    Session,
    SessionPage,
    SessionState,
    Snapshot,
    TokenUsage,
    Turn,
    TurnPage,
    TurnState,
    WorkerStatus,
    WorkerToken,
    WorkspaceRestored,
)
from ._sync_client import Client

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "AlreadyExistsError",
    "AsyncClient",
    "Client",
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
    "TurnPage",
    "SessionState",
    "Snapshot",
    "TetherError",
    "TokenUsage",
    "WorkspaceRestored",
    "Turn",
    "TurnState",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WorkerNotConnectedError",
    "WorkerStatus",
    "WorkerToken",
]
