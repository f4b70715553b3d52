"""WorkerService's workspace calls (FindMissingBlobs, PutBlobs, GetBlobs) and the manifest
chunk codec the domain's Workspaces reads chunks through.

The calls are a thin adapter over `domain/_workspaces.py`; WorkerService inherits them, so the
worker API stays one service while this concern keeps its own module.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb

from ..domain import errors
from ..domain.access import WorkerCaller
from ..domain.ports import ChunkInfo
from . import _validate as v
from ._errors import translate

if TYPE_CHECKING:
    from ..domain._workspaces import Workspaces
    from ._auth import Authenticator

#: Largest piece of a blob the control plane takes (a worker sizes its pieces and messages by
#: RegisterResponse.max_message_bytes, see `message_sizes`).
MAX_PIECE_BYTES = 1 << 20


def message_sizes(max_message_bytes: int) -> tuple[int, int]:
    """The pieces of a blob, and the pieces in one message, that fit messages of at most
    `max_message_bytes` (small blobs share a message; at most 128 KiB and 512 KiB)."""
    room = max(256, max_message_bytes - 4096)  # the rest of the message: digests, offsets
    return min(128 << 10, room // 2), min(512 << 10, room)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FILE, _DIR, _LINK = pb.WORKSPACE_ENTRY_KIND_FILE, pb.WORKSPACE_ENTRY_KIND_DIRECTORY, pb.WORKSPACE_ENTRY_KIND_SYMLINK


class ProtoChunkCodec:
    """The domain's `ChunkCodec`: a stored `WorkspaceManifestChunk`, checked entry by entry."""

    def parse_chunk(self, data: bytes) -> ChunkInfo:
        try:
            chunk = pb.WorkspaceManifestChunk.FromString(data)
        except DecodeError:
            raise ValueError("is not a WorkspaceManifestChunk") from None
        files = size = 0
        digests: list[str] = []
        sizes: list[int] = []
        previous = b""
        for i, entry in enumerate(chunk.entries):
            where = f"entry {i} ({entry.path[:200]!r})"
            problem = path_problem(entry.path)
            if problem:
                raise ValueError(f"{where}: {problem}")
            key = entry.path.encode()
            if key <= previous:
                raise ValueError(f"{where}: entries must be sorted by path, each path once")
            previous = key
            if entry.mode & ~0o777:
                raise ValueError(f"{where}: mode {entry.mode:o} has bits beyond 0o777 (setuid, setgid, sticky, type)")
            if entry.kind == _FILE:
                if not _HEX64.match(entry.digest):
                    raise ValueError(f"{where}: a file needs a lowercase hex SHA-256 digest")
                files += 1
                size += entry.size
                digests.append(entry.digest)
                sizes.append(entry.size)
            elif entry.kind == _LINK:
                if not entry.link_target or "\0" in entry.link_target:
                    raise ValueError(f"{where}: a symlink needs a target")
                files += 1
            elif entry.kind != _DIR:
                raise ValueError(f"{where}: kind must be FILE, DIRECTORY or SYMLINK")
        return ChunkInfo(files, size, tuple(digests), tuple(sizes))


def path_problem(path: str) -> str:
    """Why `path` cannot name a place inside a workspace ("" when it can)."""
    if not path:
        return "the path is empty"
    if "\0" in path or "\\" in path:
        return "the path holds a NUL or a backslash"
    if path.startswith("/"):
        return "the path is absolute"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "the path has an empty, '.' or '..' component"
    if len(path.encode()) > 4096:
        return "the path is longer than 4096 bytes"
    return ""


class WorkspaceCalls:
    """The workspace RPCs of WorkerService (which provides `_auth`, `_workspaces` and
    `_worker_id`)."""

    _auth: Authenticator
    _workspaces: Workspaces
    _send_piece_bytes: int
    _send_message_bytes: int
    _worker_id: Callable[[WorkerCaller, str], str]

    async def FindMissingBlobs(
        self, request: wpb.FindMissingBlobsRequest, context: grpc.aio.ServicerContext
    ) -> wpb.FindMissingBlobsResponse:
        async with translate(context, "FindMissingBlobs"):
            caller = await self._auth.worker(context)
            worker_id = self._worker_id(caller, request.worker_id)
            session_id = v.required("session_id", request.session_id)
            missing = await self._workspaces.find_missing(
                worker_id, session_id, request.lease_epoch, caller.owner, list(request.digests)
            )
            return wpb.FindMissingBlobsResponse(missing_digests=missing)

    async def PutBlobs(
        self, request_iterator: AsyncIterator[wpb.PutBlobsRequest], context: grpc.aio.ServicerContext
    ) -> wpb.PutBlobsResponse:
        async with translate(context, "PutBlobs"):
            caller = await self._auth.worker(context)
            requests = aiter(request_iterator)
            first = await anext(requests, None)
            if first is None:
                return wpb.PutBlobsResponse()
            worker_id = self._worker_id(caller, first.worker_id)
            session_id = v.required("session_id", first.session_id)
            count, received = await self._workspaces.put(
                worker_id, session_id, first.lease_epoch, caller.owner, _blobs_of(first, requests)
            )
            self._auth.check_still_valid(caller)
            return wpb.PutBlobsResponse(blob_count=count, bytes_received=received)

    async def GetBlobs(
        self, request: wpb.GetBlobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wpb.GetBlobsResponse]:
        async with translate(context, "GetBlobs"):
            caller = await self._auth.worker(context)
            worker_id = self._worker_id(caller, request.worker_id)
            session_id = v.required("session_id", request.session_id)
            out = wpb.GetBlobsResponse()
            size = 0
            current, offset = "", 0
            async for digest, piece in self._workspaces.read(
                worker_id, session_id, request.lease_epoch, caller.owner, list(request.digests)
            ):
                if digest != current:
                    current, offset = digest, 0
                for start in range(0, max(len(piece), 1), self._send_piece_bytes):
                    data = piece[start : start + self._send_piece_bytes]
                    if size + len(data) + 100 > self._send_message_bytes and out.chunks:
                        yield out
                        out, size = wpb.GetBlobsResponse(), 0
                    out.chunks.append(wpb.BlobChunk(digest=digest, offset=offset, data=data))
                    offset += len(data)
                    size += len(data) + 100
            if out.chunks:
                yield out


async def _blobs_of(
    first: wpb.PutBlobsRequest, rest: AsyncIterator[wpb.PutBlobsRequest]
) -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
    """The upload's blobs, each as (digest, size, its pieces), read from the stream as the store
    consumes them: no blob is ever whole in memory."""
    reader = _PieceReader(_pieces_of(first, rest))
    head = await reader.next_piece()
    while head is not None:
        if head.offset != 0:
            raise errors.InvalidArgument("chunks.offset", f"blob {head.digest[:64]} must start at offset 0")
        yield head.digest, head.size, reader.pieces(head)
        head = reader.next_head


async def _pieces_of(
    first: wpb.PutBlobsRequest, rest: AsyncIterator[wpb.PutBlobsRequest]
) -> AsyncIterator[wpb.BlobChunk]:
    for piece in first.chunks:
        yield piece
    async for message in rest:
        for piece in message.chunks:
            yield piece


class _PieceReader:
    """Reads one blob's pieces off the upload's pieces, then the piece that starts the next."""

    def __init__(self, pieces: AsyncIterator[wpb.BlobChunk]) -> None:
        self._pieces = pieces
        self.next_head: wpb.BlobChunk | None = None

    async def next_piece(self) -> wpb.BlobChunk | None:
        return await anext(self._pieces, None)

    async def pieces(self, head: wpb.BlobChunk) -> AsyncIterator[bytes]:
        digest, size = head.digest, head.size
        self.next_head = None
        _check_piece(head)
        yield head.data
        offset = len(head.data)
        while offset < size:
            piece = await self.next_piece()
            if piece is None:
                raise errors.InvalidArgument(
                    "chunks", f"the upload ended {size - offset} bytes before the end of blob {digest}"
                )
            if piece.digest != digest or piece.offset != offset:
                raise errors.InvalidArgument(
                    "chunks.offset", f"blob {digest} continues at offset {offset}, not at {piece.offset}"
                )
            _check_piece(piece)
            yield piece.data
            offset += len(piece.data)
        self.next_head = await self.next_piece()


def _check_piece(piece: wpb.BlobChunk) -> None:
    if len(piece.data) > MAX_PIECE_BYTES:
        raise errors.InvalidArgument("chunks.data", f"pieces of a blob are at most {MAX_PIECE_BYTES} bytes")
