"""The control plane's error tree.

Every error a caller can cause has a stable `reason` (the contract's ErrorReason without its
prefix) and a status `code` name. `api/` turns these into google.rpc.Status in one place; the
store turns database failures into these, so nothing above `store/` sees SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """Base of every expected error. `code` names the gRPC status code to answer with."""

    code = "INTERNAL"
    reason = "INTERNAL"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(self, field_name: str, description: str) -> None:
        super().__init__(f"{field_name}: {description}", field=field_name)
        self.violations = [FieldViolation(field_name, description)]


class InvalidPageToken(InvalidArgument):
    """A page token that is malformed or continues another query (the field is page_token)."""

    reason = "INVALID_PAGE_TOKEN"

    def __init__(self, description: str) -> None:
        super().__init__("page_token", description)


class SessionNotFound(DomainError):
    code = "NOT_FOUND"
    reason = "SESSION_NOT_FOUND"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} does not exist", session_id=session_id)


class TurnNotFound(DomainError):
    code = "NOT_FOUND"
    reason = "TURN_NOT_FOUND"

    def __init__(self, session_id: str, turn_id: str) -> None:
        super().__init__(
            f"turn {turn_id!r} does not exist in session {session_id!r}",
            session_id=session_id,
            turn_id=turn_id,
        )


class SnapshotNotFound(DomainError):
    code = "NOT_FOUND"
    reason = "SNAPSHOT_NOT_FOUND"


class SnapshotBaseUnknown(DomainError):
    """A snapshot names a base that is not a stored snapshot of its session: the worker sends
    the whole history instead."""

    code = "FAILED_PRECONDITION"
    reason = "SNAPSHOT_BASE_UNKNOWN"


class LeaseLost(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "LEASE_LOST"

    def __init__(self, session_id: str, epoch: int, current: int) -> None:
        if current == 0:
            what = "no worker holds it now, or the session is gone"
        elif current == epoch:
            what = "at that epoch the lease was released, or is held by another worker"
        elif current > epoch:
            what = f"it was superseded by epoch {current}"
        else:
            what = f"it was never granted (the lease is at epoch {current})"
        super().__init__(
            f"lease epoch {epoch} of session {session_id!r} is not this worker's: {what}; stop this session",
            session_id=session_id,
            lease_epoch=str(epoch),
            current_epoch=str(current),
        )


class SessionArchived(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "SESSION_ARCHIVED"


class IdempotencyKeyReused(DomainError):
    code = "ALREADY_EXISTS"
    reason = "IDEMPOTENCY_KEY_REUSED"


class TurnAlreadyEnded(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "TURN_ALREADY_ENDED"


class NoActiveTurn(DomainError):
    """An interrupt named no turn and the session has none queued or running."""

    code = "FAILED_PRECONDITION"
    reason = "NO_ACTIVE_TURN"


class TurnNotEnded(DomainError):
    """The call needs a turn that ended, and the named one is queued or running."""

    code = "FAILED_PRECONDITION"
    reason = "TURN_NOT_ENDED"


class NoCompletedTurn(DomainError):
    """No turn was named and the session has no completed turn to default to."""

    code = "FAILED_PRECONDITION"
    reason = "NO_COMPLETED_TURN"


class TurnReverted(DomainError):
    """The turn was reverted and is no longer part of the model-visible history."""

    code = "FAILED_PRECONDITION"
    reason = "TURN_REVERTED"


class WorkerSeqGap(InvalidArgument):
    """A batch's fresh events do not continue the accepted worker_seq watermark (the reason
    stays INVALID_ARGUMENT; the class lets a multiplexed stream drop the batches a worker sent
    before it read a refusal)."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__("events.worker_seq", f"worker_seq must continue at {expected} with no gaps; got {got}")


class WorkerSeqReused(InvalidArgument):
    """A claimed duplicate event differs from the event stored under its number."""

    reason = "WORKER_SEQ_REUSED"


class WorkerNotRegistered(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "WORKER_NOT_REGISTERED"


class NoWorker(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "NO_WORKER"


class RuntimeNotPortable(DomainError):
    """The session's runtime declares portability none and the session has run on a worker: it
    cannot continue on another one."""

    code = "FAILED_PRECONDITION"
    reason = "RUNTIME_NOT_PORTABLE"


class RuntimeMismatch(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "RUNTIME_MISMATCH"


class CursorOutOfRange(DomainError):
    code = "OUT_OF_RANGE"
    reason = "CURSOR_OUT_OF_RANGE"


class CursorExpired(DomainError):
    """The cursor names events retention compacted away; `oldest_seq` is the first still served."""

    code = "OUT_OF_RANGE"
    reason = "CURSOR_EXPIRED"

    def __init__(self, session_id: str, after_seq: int, compacted_seq: int) -> None:
        super().__init__(
            f"cursor {after_seq} of session {session_id!r} names events that were compacted away by retention; "
            f"the log is served from seq {compacted_seq + 1} (read the session's history from its snapshot, "
            f"or follow from after_seq {compacted_seq})",
            session_id=session_id,
            oldest_seq=str(compacted_seq + 1),
        )


class NotImplementedYet(DomainError):
    code = "UNIMPLEMENTED"
    reason = "NOT_IMPLEMENTED"


class Unavailable(DomainError):
    """The store or a worker could not do the work now; retrying later may succeed."""

    code = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class Timeout(DomainError):
    code = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class SessionBusy(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "SESSION_BUSY"


class ChangedWhileExported(SessionBusy):
    """Retention compacted (or a delete removed) the session's events while an export read them:
    the bundle would have a gap, so the export stops; exporting again gives a whole bundle."""

    code = "ABORTED"


class WorkerNotFound(DomainError):
    code = "NOT_FOUND"
    reason = "WORKER_NOT_REGISTERED"


class WorkerNotConnected(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "WORKER_NOT_CONNECTED"


class RehydrationFailed(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "REHYDRATION_FAILED"


class RequestNotFound(DomainError):
    code = "NOT_FOUND"
    reason = "REQUEST_NOT_FOUND"

    def __init__(self, session_id: str, request_id: str) -> None:
        super().__init__(
            f"request {request_id!r} does not exist in session {session_id!r}",
            session_id=session_id,
            request_id=request_id,
        )


class RequestAlreadyResolved(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "REQUEST_ALREADY_RESOLVED"


class Unauthenticated(DomainError):
    """No credentials, or unknown ones. The message never repeats the secret."""

    code = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class TokenRevoked(Unauthenticated):
    reason = "TOKEN_REVOKED"


class PairingCodeInvalid(Unauthenticated):
    reason = "PAIRING_CODE_INVALID"

    def __init__(self) -> None:
        super().__init__(
            "the pairing code is unknown, expired or already used; ask for a new one "
            "(tether pair, or AdminService.CreatePairingCode)"
        )


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class LimitExceeded(DomainError):
    """A per-owner or per-session limit; `limit` names the setting, `value` gives it."""

    code = "RESOURCE_EXHAUSTED"
    reason = "LIMIT_EXCEEDED"

    def __init__(self, limit: str, value: float, what: str) -> None:
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        super().__init__(f"limit {limit}={shown} reached: {what}", limit=limit, value=shown)


class WorkerTokenNotFound(DomainError):
    code = "NOT_FOUND"
    reason = "WORKER_TOKEN_NOT_FOUND"

    def __init__(self, token_id: str) -> None:
        super().__init__(f"worker token {token_id!r} does not exist", token_id=token_id)


class InvalidBundle(InvalidArgument):
    """An ImportSession bundle that is malformed, truncated or inconsistent (the field is the
    stream's `chunk`; the description names the line)."""

    reason = "INVALID_BUNDLE"

    def __init__(self, line: int, description: str) -> None:
        super().__init__("chunk", f"line {line}: {description}" if line else description)


class UnsupportedBundleVersion(InvalidArgument):
    reason = "UNSUPPORTED_BUNDLE_VERSION"

    def __init__(self, version: object, supported: int) -> None:
        super().__init__(
            "chunk",
            f"line 1: bundle format version {version!r} is not one this control plane reads (it reads "
            f"versions 1 to {supported}); import it with the Tether release that exported it, or a newer one",
        )


class SessionExists(DomainError):
    code = "ALREADY_EXISTS"
    reason = "SESSION_EXISTS"

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id!r} already exists; import without keep_session_id to get a new id",
            session_id=session_id,
        )


class OutputSchemaUnsupported(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "OUTPUT_SCHEMA_UNSUPPORTED"


class WorkspaceLimitExceeded(LimitExceeded):
    """A workspace checkpoint or blob upload over one of the owner's workspace limits; the
    session keeps its previous checkpoint."""

    reason = "WORKSPACE_LIMIT_EXCEEDED"


class InvalidWorkspace(InvalidArgument):
    """A workspace manifest or blob that is malformed or names what is not there."""

    reason = "INVALID_WORKSPACE"
