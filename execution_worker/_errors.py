"""Reading the control plane's errors: the google.rpc.Status details on a failed call.

The server puts an ErrorInfo (domain "tether.dev") with a stable reason in the
`grpc-status-details-bin` trailer; the worker acts on the reason, not on the message text.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

ERROR_DOMAIN = "tether.dev"
LEASE_LOST = "LEASE_LOST"
WORKER_NOT_REGISTERED = "WORKER_NOT_REGISTERED"

_DETAILS_KEY = "grpc-status-details-bin"


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason the server attached to `error`, or "" when there is none."""
    try:
        metadata = error.trailing_metadata() or ()
    except Exception:
        return ""
    for key, value in metadata:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:
            return ""
        return status_reason(status)
    return ""


def status_reason(status: status_pb2.Status) -> str:
    """The ErrorInfo reason among a google.rpc.Status's details, or "" when there is none."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def status_lease_lost(status: status_pb2.Status) -> bool:
    """`is_lease_lost` for a status answered in-band (a refused batch on StreamWorkerEvents)."""
    return status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and status_reason(status) == LEASE_LOST


def describe_status(status: status_pb2.Status) -> str:
    """`describe` for a status answered in-band."""
    reason = status_reason(status)
    names = {c.value[0]: c.name for c in grpc.StatusCode}
    return f"{names.get(status.code, status.code)}: {status.message}" + (f" [{reason}]" if reason else "")


def is_lease_lost(error: BaseException) -> bool:
    return (
        isinstance(error, grpc.aio.AioRpcError)
        and error.code() == grpc.StatusCode.FAILED_PRECONDITION
        and error_reason(error) == LEASE_LOST
    )


def describe(error: BaseException) -> str:
    """One log-friendly line for an RPC failure."""
    if isinstance(error, grpc.aio.AioRpcError):
        reason = error_reason(error)
        suffix = f" [{reason}]" if reason else ""
        return f"{error.code().name}: {error.details()}{suffix}"
    return f"{type(error).__name__}: {error}"
