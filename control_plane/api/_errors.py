"""Domain errors → google.rpc.Status, in one place.

Every handler runs inside `translate()`: a `DomainError` becomes its status code with an
ErrorInfo (reason, domain "tether.dev", metadata) and, for bad input, a BadRequest naming the
field; anything unexpected becomes INTERNAL with a generic message and a logged traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]

from ..domain import errors

log = logging.getLogger(__name__)

DOMAIN = "tether.dev"
_DETAILS_KEY = "grpc-status-details-bin"
# A status travels in trailers, which gRPC clients refuse past 8 KiB: a message quoting a huge
# input (an answer, a decision a worker listed) arrived as RESOURCE_EXHAUSTED "metadata size
# exceeds hard limit", with nothing of tether's. Three copies of it travel (grpc-message,
# percent-encoded, and Status.message and the BadRequest description in the details).
MAX_MESSAGE_BYTES = 1000


def _cut(text: str) -> str:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= MAX_MESSAGE_BYTES:
        return text
    kept = raw[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")
    return f"{kept}... ({len(text) - len(kept)} more characters cut)"


def status_for(err: errors.DomainError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code = getattr(grpc.StatusCode, err.code)
    status = status_pb2.Status(code=getattr(code_pb2, err.code), message=_cut(err.message))
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata))
    status.details.append(info)
    if isinstance(err, errors.InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=_cut(v.field), description=_cut(v.description))
                for v in err.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        status.details.append(packed)
    return code, status


async def abort(context: grpc.aio.ServicerContext, err: errors.DomainError) -> NoReturn:
    code, status = status_for(err)
    await context.abort(code, status.message, trailing_metadata=((_DETAILS_KEY, status.SerializeToString()),))


@asynccontextmanager
async def translate(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    try:
        yield
    except errors.DomainError as err:
        await abort(context, err)
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("unexpected error in %s", method)
        await abort(context, _Internal(f"internal error in {method}; the server log has the details"))


class _Internal(errors.DomainError):
    code = "INTERNAL"
    reason = "INTERNAL"
