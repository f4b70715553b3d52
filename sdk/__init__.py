"""Python SDK of Tether, a control plane for remote agent execution.

The public API is what this module exports; the `_name` modules behind it are private::

    async with sdk.AsyncClient("127.0.0.1:7670") as client:
        session = await client.create_session("shell")
        turn = await client.send_input(session.session_id, "echo hi")
        async for event in client.stream_events(session.session_id):
            ...

`Client` offers the same methods, blocking; both also serve operators (`list_workers`,
`drain_worker`). Failed calls raise a `TetherError` subclass (the tree is documented in
`sdk._errors`). The `tether session` command and the `tether worker list` / `drain` commands
live in `sdk.cli`.
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
    RequestCancelledError,
    ResourceExhaustedError,
    SessionBusyError,
    TetherError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    WorkerNotConnectedError,
)
from ._models import (
    Event,
    EventKind,
    HistoryItem,
    HistoryItemRole,
    Session,
    SessionPage,
    SessionState,
    Snapshot,
    Turn,
    TurnState,
    WorkerStatus,
)
from ._sync_client import Client

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "AlreadyExistsError",
    "AsyncClient",
    "Client",
    "DeadlineExceededError",
    "Event",
    "EventKind",
    "FailedPreconditionError",
    "HistoryItem",
    "HistoryItemRole",
    "InternalError",
    "InvalidArgumentError",
    "LeaseLostError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "RehydrationFailedError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "Session",
    "SessionBusyError",
    "SessionPage",
    "SessionState",
    "Snapshot",
    "TetherError",
    "Turn",
    "TurnState",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WorkerNotConnectedError",
    "WorkerStatus",
]
