"""The SDK's exception tree and the one place gRPC errors become it.

Every failed call raises a subclass of `TetherError`::

    TetherError                      any failed call (.code, .reason, .message, .metadata,
    │                                .field_violations)
    ├── InvalidArgumentError         INVALID_ARGUMENT: a request field is missing or malformed
    ├── NotFoundError                NOT_FOUND: session, turn or snapshot does not exist
    │   └── RequestNotFoundError     reason REQUEST_NOT_FOUND: the session has no pending
    │                                request with that id
    ├── AlreadyExistsError           ALREADY_EXISTS
    ├── FailedPreconditionError      FAILED_PRECONDITION (and ABORTED): e.g. SESSION_ARCHIVED,
    │   │                            TURN_ALREADY_ENDED, NO_WORKER
    │   ├── LeaseLostError           reason LEASE_LOST: a write's lease epoch is stale
    │   ├── SessionBusyError         reason SESSION_BUSY: a turn is queued or running and the
    │   │                            call needs the session idle (e.g. RestoreSession)
    │   ├── WorkerNotConnectedError  reason WORKER_NOT_CONNECTED: the named worker has no
    │   │                            open Lease stream (e.g. DrainWorker, RestoreSession)
    │   ├── RehydrationFailedError   reason REHYDRATION_FAILED: the target worker could not
    │   │                            rebuild the session's runtime from its history
    │   └── RequestAlreadyResolvedError
    │                                reason REQUEST_ALREADY_RESOLVED: the pending request was
    │                                already answered, or expired with its turn
    ├── OutOfRangeError              OUT_OF_RANGE: e.g. CURSOR_OUT_OF_RANGE
    ├── ResourceExhaustedError       RESOURCE_EXHAUSTED
    ├── UnauthenticatedError         UNAUTHENTICATED
    ├── PermissionDeniedError        PERMISSION_DENIED
    ├── UnavailableError             UNAVAILABLE: the control plane cannot be reached
    ├── DeadlineExceededError        DEADLINE_EXCEEDED: the call's deadline passed
    ├── RequestCancelledError        CANCELLED (named so it does not shadow asyncio's)
    ├── UnimplementedError           UNIMPLEMENTED: e.g. ForkSession on this server
    └── InternalError                INTERNAL, UNKNOWN, DATA_LOSS and anything unmapped

The server puts a `google.rpc.Status` in the trailing metadata; its `ErrorInfo` gives the
stable `reason` (for example "SESSION_NOT_FOUND") and its `BadRequest` the field violations.
The class comes from the reason when one names a narrower class (the table below), else from
the status code; a reason this SDK does not know still arrives in `.reason`.
`translate_rpc_error` is the only function that turns a `grpc.aio.AioRpcError` into one of these.
"""

from __future__ import annotations

from typing import Any

import grpc

# googleapis-common-protos ships no type information (no py.typed, no stubs in the dev set).
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from .channel import tls_hint

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "LeaseLostError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "RehydrationFailedError",
    "RequestAlreadyResolvedError",
    "RequestCancelledError",
    "RequestNotFoundError",
    "ResourceExhaustedError",
    "SessionBusyError",
    "TetherError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WorkerNotConnectedError",
    "translate_rpc_error",
]

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class TetherError(Exception):
    """A call to the control plane failed.

    Attributes:
        code: the gRPC status code.
        reason: the stable `ErrorInfo.reason` ("SESSION_NOT_FOUND", "LEASE_LOST", ...); empty
            when the server sent none (for example when the connection failed).
        message: the server's message.
        metadata: `ErrorInfo.metadata` (for example {"session_id": "ses_..."}).
        field_violations: `(field, description)` pairs from a `BadRequest` detail.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])

    def __str__(self) -> str:
        text = self.message or self.code.name
        if self.reason:
            text = f"{text} ({self.reason})"
        if self.field_violations:
            fields = "; ".join(f"{field}: {desc}" for field, desc in self.field_violations)
            text = f"{text} [{fields}]"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


class InvalidArgumentError(TetherError):
    """A request field is missing or malformed; see `field_violations`."""


class NotFoundError(TetherError):
    """The session, turn or snapshot does not exist."""


class RequestNotFoundError(NotFoundError):
    """The pending request does not exist in that session."""


class AlreadyExistsError(TetherError):
    """The resource already exists."""


class FailedPreconditionError(TetherError):
    """The request is valid but the resource is not in a state that allows it."""


class LeaseLostError(FailedPreconditionError):
    """A write carried a lease epoch that is no longer current; stop working on the session."""


class SessionBusyError(FailedPreconditionError):
    """The session has a turn queued or running; the call needs it idle (interrupt or wait)."""


class WorkerNotConnectedError(FailedPreconditionError):
    """The worker the call names is not connected to the control plane."""


class RehydrationFailedError(FailedPreconditionError):
    """The target worker could not rehydrate the session's runtime from its history; the
    session is left without a holder and its next turn goes to any eligible worker."""


class RequestAlreadyResolvedError(FailedPreconditionError):
    """The pending request was already answered (each is answered exactly once) or expired
    with its turn; it takes no answer. `list_requests` shows how it ended."""


class OutOfRangeError(TetherError):
    """A cursor or position lies beyond what exists."""


class ResourceExhaustedError(TetherError):
    """A quota or size limit was hit."""


class UnauthenticatedError(TetherError):
    """The call carried no valid credentials."""


class PermissionDeniedError(TetherError):
    """The caller may not do this."""


class UnavailableError(TetherError):
    """The control plane could not be reached; retrying later may succeed."""


class DeadlineExceededError(TetherError):
    """The call's deadline passed before it finished."""


class RequestCancelledError(TetherError):
    """The call was cancelled (gRPC CANCELLED)."""


class UnimplementedError(TetherError):
    """The server does not implement this call (yet)."""


class InternalError(TetherError):
    """The server failed unexpectedly, or answered with a code the SDK does not map."""


_ERROR_FOR_CODE: dict[grpc.StatusCode, type[TetherError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: FailedPreconditionError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}

# Reasons that pick a narrower class than the status code alone would.
_ERROR_FOR_REASON: dict[str, type[TetherError]] = {
    "LEASE_LOST": LeaseLostError,
    "SESSION_BUSY": SessionBusyError,
    "WORKER_NOT_CONNECTED": WorkerNotConnectedError,
    "REHYDRATION_FAILED": RehydrationFailedError,
    "REQUEST_NOT_FOUND": RequestNotFoundError,
    "REQUEST_ALREADY_RESOLVED": RequestAlreadyResolvedError,
}


def _rich_status(trailing_metadata: Any) -> status_pb2.Status | None:
    for key, value in trailing_metadata or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed detail must not hide the original error
                return None
    return None


def translate_rpc_error(
    error: grpc.aio.AioRpcError, *, tls: bool | None = None, client_cert: bool = False
) -> TetherError:
    """Return the typed SDK exception for a failed gRPC call (the caller raises it).

    `tls` (with `client_cert`) says how the client dialled, when the SDK made the channel:
    then a connection failure that looks like a TLS mistake says what to set (`tls_hint`)."""
    code = error.code() or grpc.StatusCode.UNKNOWN
    message = error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and tls is not None:
        hint = tls_hint(message, tls=tls, client_cert=client_cert)
        message = f"{message}; {hint}" if hint else message
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    status = _rich_status(error.trailing_metadata())
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata.update(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
    cls = _ERROR_FOR_REASON.get(reason) or _ERROR_FOR_CODE.get(code, InternalError)
    return cls(message, code=code, reason=reason, metadata=metadata, field_violations=violations)
