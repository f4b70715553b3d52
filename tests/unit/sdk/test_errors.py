"""The SDK's translation of gRPC errors (with and without rich status) into typed errors, on
constructed values.
"""

from __future__ import annotations

import grpc
import pytest

from tests.helpers.fake_session_service import _rich_status
from tether import sdk
from tether.sdk._errors import translate_rpc_error


def _rpc_error(code: grpc.StatusCode, message: str, **kwargs) -> grpc.aio.AioRpcError:
    status = _rich_status(code, message, **kwargs)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


# -- errors -----------------------------------------------------------------------------


def test_not_found_carries_reason_message_and_metadata():
    err = translate_rpc_error(
        _rpc_error(
            grpc.StatusCode.NOT_FOUND,
            "session ses_x not found",
            reason="SESSION_NOT_FOUND",
            metadata={"session_id": "ses_x"},
        )
    )
    assert type(err) is sdk.NotFoundError
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.reason == "SESSION_NOT_FOUND"
    assert err.message == "session ses_x not found"
    assert err.metadata == {"session_id": "ses_x"}
    assert str(err) == "session ses_x not found (SESSION_NOT_FOUND)"


def test_invalid_argument_carries_field_violations():
    err = translate_rpc_error(
        _rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "runtime is required",
            reason="INVALID_ARGUMENT",
            violations=[("runtime", "must not be empty")],
        )
    )
    assert isinstance(err, sdk.InvalidArgumentError)
    assert err.field_violations == [("runtime", "must not be empty")]
    assert "runtime: must not be empty" in str(err)


def test_lease_lost_is_chosen_by_reason():
    err = translate_rpc_error(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "epoch 3 is stale", reason="LEASE_LOST"))
    assert type(err) is sdk.LeaseLostError
    assert isinstance(err, sdk.FailedPreconditionError)

    other = translate_rpc_error(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "archived", reason="SESSION_ARCHIVED"))
    assert type(other) is sdk.FailedPreconditionError


@pytest.mark.parametrize(
    ("code", "reason", "cls", "parent"),
    [
        (grpc.StatusCode.NOT_FOUND, "REQUEST_NOT_FOUND", sdk.RequestNotFoundError, sdk.NotFoundError),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "REQUEST_ALREADY_RESOLVED",
            sdk.RequestAlreadyResolvedError,
            sdk.FailedPreconditionError,
        ),
    ],
)
def test_request_reasons_have_typed_errors(code, reason, cls, parent):
    err = translate_rpc_error(_rpc_error(code, "no", reason=reason, metadata={"request_id": "req_1"}))
    assert type(err) is cls and isinstance(err, parent)
    assert (err.reason, err.metadata) == (reason, {"request_id": "req_1"})


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, sdk.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, sdk.NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, sdk.AlreadyExistsError),
        (grpc.StatusCode.FAILED_PRECONDITION, sdk.FailedPreconditionError),
        (grpc.StatusCode.OUT_OF_RANGE, sdk.OutOfRangeError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, sdk.ResourceExhaustedError),
        (grpc.StatusCode.UNAUTHENTICATED, sdk.UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, sdk.PermissionDeniedError),
        (grpc.StatusCode.UNAVAILABLE, sdk.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, sdk.DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, sdk.RequestCancelledError),
        (grpc.StatusCode.UNIMPLEMENTED, sdk.UnimplementedError),
        (grpc.StatusCode.INTERNAL, sdk.InternalError),
        (grpc.StatusCode.UNKNOWN, sdk.InternalError),
    ],
)
def test_each_status_code_maps_to_its_class(code, cls):
    err = translate_rpc_error(_rpc_error(code, "boom"))
    assert type(err) is cls
    assert isinstance(err, sdk.TetherError)
    assert err.reason == ""


def test_error_without_rich_status_keeps_grpc_details():
    plain = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")
    err = translate_rpc_error(plain)
    assert type(err) is sdk.UnavailableError
    assert str(err) == "down"


def test_malformed_status_details_do_not_hide_the_error():
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00garbage"))
    err = translate_rpc_error(
        grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailing, details="oops")
    )
    assert type(err) is sdk.InternalError
    assert err.message == "oops"
