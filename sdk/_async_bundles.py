"""`BundleCalls`: `AsyncClient`'s export and import of session bundles (docs/bundles.md),
streamed in pieces, mixed into it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable

import grpc

from tether.v1 import session_service_pb2 as pb

from . import _convert
from ._async_boundary import ClientBoundary
from ._errors import translate_rpc_error
from ._models import Session

__all__ = ["BundleCalls"]


class BundleCalls(ClientBoundary):
    """`AsyncClient`'s ExportSession and ImportSession calls."""

    async def export_session(self, session_id: str, *, timeout_s: float | None = None) -> AsyncGenerator[bytes, None]:
        """The session's bundle (docs/bundles.md), chunk by chunk: write the chunks out in order
        and they are the whole bundle. The session must have no turn queued or running
        (SessionBusyError otherwise)."""
        if self._closed:
            raise RuntimeError("AsyncClient is closed")
        request = pb.ExportSessionRequest(session_id=session_id)
        call = self._stub.ExportSession(request, timeout=self._deadline(timeout_s), metadata=self._metadata)
        try:
            async for response in call:
                yield response.chunk
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, **self._transport) from exc
        finally:
            call.cancel()

    async def import_session(
        self,
        bundle: bytes | Iterable[bytes] | AsyncIterable[bytes],
        *,
        keep_session_id: bool = False,
        timeout_s: float | None = None,
    ) -> Session:
        """Create a session from a bundle (bytes, or chunks of it: a file opened "rb" works),
        under this client's owner and with new ids unless `keep_session_id`. Raises
        InvalidArgumentError (INVALID_BUNDLE, UNSUPPORTED_BUNDLE_VERSION) naming the bad line,
        ResourceExhaustedError past the server's size limit, and AlreadyExistsError
        (SESSION_EXISTS); nothing is stored then."""
        if self._closed:
            raise RuntimeError("AsyncClient is closed")

        async def requests() -> AsyncIterator[pb.ImportSessionRequest]:
            first = True
            async for piece in _pieces(bundle):
                yield pb.ImportSessionRequest(chunk=piece, keep_session_id=keep_session_id and first)
                first = False
            if first:  # an empty bundle: the server says what is wrong with it
                yield pb.ImportSessionRequest(keep_session_id=keep_session_id)

        try:
            response = await self._stub.ImportSession(
                requests(), timeout=self._deadline(timeout_s), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, **self._transport) from exc
        return _convert.session_from_proto(response.session)


_IMPORT_PIECE = 128 * 1024  # bytes per ImportSession message: well under any message limit


async def _pieces(bundle: bytes | Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The bundle re-cut into pieces of at most `_IMPORT_PIECE` bytes."""
    if isinstance(bundle, bytes | bytearray | memoryview):
        data = bytes(bundle)
        for i in range(0, len(data), _IMPORT_PIECE):
            yield data[i : i + _IMPORT_PIECE]
        return
    pending = bytearray()
    if isinstance(bundle, AsyncIterable):
        async for chunk in bundle:
            pending += chunk
            while len(pending) >= _IMPORT_PIECE:
                yield bytes(pending[:_IMPORT_PIECE])
                del pending[:_IMPORT_PIECE]
    else:
        for chunk in bundle:
            pending += chunk
            while len(pending) >= _IMPORT_PIECE:
                yield bytes(pending[:_IMPORT_PIECE])
                del pending[:_IMPORT_PIECE]
    if pending:
        yield bytes(pending)
