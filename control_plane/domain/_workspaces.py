"""Workspaces on the control plane: the blobs a session's checkpoints name, and the checks a
checkpoint passes before a snapshot may carry it.

Owns which blobs a worker may put and get, the owner's workspace limits, and two small caches:
the manifest chunks already checked (a chunk is checked once: every blob it names is stored,
every path stays inside the workspace) and the digests each session's latest checkpoint names
(what its lease holder may download). Blob bytes go through the `BlobStore` port; a chunk's
entries are read through the `ChunkCodec` port, so nothing here sees protobuf.

A checkpoint is complete before the snapshot that carries it is stored: the worker finds the
missing blobs, uploads them (`put`), then sends the snapshot with the manifest; `prepare` refuses
a manifest that names a blob the owner does not hold. The snapshot's commit stores the
checkpoint row in the same transaction (Snapshots).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from . import errors
from .access import Limits
from .model import Checkpoint, now_us
from .ports import BlobMismatch, BlobStore, ChunkCodec, ChunkInfo, SessionReader

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: Digests one FindMissingBlobs or GetBlobs call may name.
MAX_DIGESTS_PER_CALL = 10_000
_CHUNKS_CACHED = 4096
_SESSIONS_CACHED = 256

CheckLease = Callable[[str, str, int, str], Awaitable[None]]


class Workspaces:
    def __init__(
        self, reader: SessionReader, blobs: BlobStore, codec: ChunkCodec, limits: Limits, check_lease: CheckLease
    ) -> None:
        self._reader = reader
        self._blobs = blobs
        self._codec = codec
        self._limits = limits
        self._check_lease = check_lease
        self._chunks: OrderedDict[tuple[str, str], ChunkInfo] = OrderedDict()  # (owner, digest): checked
        self._allowed: OrderedDict[tuple[str, int], frozenset[str]] = OrderedDict()  # (session, seq)

    @property
    def blobs(self) -> BlobStore:
        return self._blobs

    async def find_missing(
        self, worker_id: str, session_id: str, epoch: int, owner: str, digests: list[str]
    ) -> list[str]:
        _check_digests("digests", digests)
        await self._check_lease(worker_id, session_id, epoch, owner)
        return await self._blobs.missing(owner, list(dict.fromkeys(digests)))

    async def put(
        self,
        worker_id: str,
        session_id: str,
        epoch: int,
        owner: str,
        blobs: AsyncIterator[tuple[str, int, AsyncIterator[bytes]]],
    ) -> tuple[int, int]:
        """Store each (digest, size, chunks) of `blobs`; returns how many blobs and bytes."""
        await self._check_lease(worker_id, session_id, epoch, owner)
        used = await self._blobs.usage(owner)
        tally = [0, 0]

        async def checked() -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
            nonlocal used
            async for digest, size, chunks in blobs:
                _check_digests("chunks.digest", [digest])
                self._check_blob_size(owner, digest, size, used)
                used += size
                tally[0] += 1
                tally[1] += size
                yield digest, size, chunks

        try:
            await self._blobs.put(owner, checked())
        except BlobMismatch as mismatch:
            raise errors.InvalidWorkspace("chunks.data", str(mismatch)) from None
        return tally[0], tally[1]

    def _check_blob_size(self, owner: str, digest: str, size: int, used: int) -> None:
        if size > self._limits.max_workspace_bytes:
            raise errors.WorkspaceLimitExceeded(
                "max_workspace_bytes",
                self._limits.max_workspace_bytes,
                f"blob {digest} is {size} bytes, more than a whole workspace checkpoint may hold",
            )
        if used + size > self._limits.max_blob_bytes_per_owner:
            raise errors.WorkspaceLimitExceeded(
                "max_blob_bytes_per_owner",
                self._limits.max_blob_bytes_per_owner,
                f"owner {owner!r} stores {used} bytes of workspace blobs and blob {digest} adds {size}; "
                "delete sessions (or add ignore patterns to .tetherignore) to make room",
            )

    async def read(
        self, worker_id: str, session_id: str, epoch: int, owner: str, digests: list[str]
    ) -> AsyncIterator[tuple[str, bytes]]:
        """(digest, piece) of each blob in `digests`, one blob after another; each must be named by the
        session's latest checkpoint, which is all its lease holder may read."""
        _check_digests("digests", digests)
        await self._check_lease(worker_id, session_id, epoch, owner)
        checkpoint = await self._reader.current_checkpoint(session_id)
        allowed = await self._named_by(owner, checkpoint) if checkpoint is not None else frozenset()
        for digest in digests:
            if digest not in allowed:
                raise errors.InvalidWorkspace(
                    "digests",
                    f"blob {digest} is not named by session {session_id!r}'s latest workspace checkpoint; "
                    "a worker may read only the blobs of the checkpoint it restores",
                )
        try:
            async for digest, piece in self._blobs.read(owner, list(dict.fromkeys(digests))):
                yield digest, piece
        except KeyError as gone:
            raise errors.InvalidWorkspace("digests", f"blob {gone.args[0]} is not stored") from None

    async def prepare(
        self, owner: str, session_id: str, seq: int, chunk_digests: list[str], file_count: int, total_bytes: int
    ) -> Checkpoint:
        """The checkpoint a snapshot at `seq` carries, once its manifest is checked: every
        chunk and every blob a chunk names is stored, the paths stay inside the workspace, the
        counts are what the chunks hold, and the owner's limits are kept."""
        _check_digests("workspace.chunk_digests", chunk_digests)
        missing = await self._blobs.missing(owner, list(dict.fromkeys(chunk_digests))) if chunk_digests else []
        if missing:
            raise errors.InvalidWorkspace(
                "workspace.chunk_digests",
                f"manifest chunk {missing[0]} is not stored ({len(missing)} missing); upload it with PutBlobs first",
            )
        files = size = 0
        for digest in chunk_digests:
            info = await self._chunk(owner, digest)
            files += info.file_count
            size += info.total_bytes
        if (files, size) != (file_count, total_bytes):
            raise errors.InvalidWorkspace(
                "workspace",
                f"the manifest says {file_count} files and {total_bytes} bytes but its chunks hold {files} and {size}",
            )
        limits = self._limits
        if size > limits.max_workspace_bytes:
            raise errors.WorkspaceLimitExceeded(
                "max_workspace_bytes",
                limits.max_workspace_bytes,
                f"the workspace of session {session_id!r} holds {size} bytes; list what need not move in "
                ".tetherignore. The session keeps its previous checkpoint",
            )
        if files > limits.max_workspace_files:
            raise errors.WorkspaceLimitExceeded(
                "max_workspace_files",
                limits.max_workspace_files,
                f"the workspace of session {session_id!r} holds {files} files; list what need not move in "
                ".tetherignore. The session keeps its previous checkpoint",
            )
        turn_id = await self._reader.turn_ended_upto(session_id, seq)
        return Checkpoint(session_id, seq, turn_id, tuple(chunk_digests), files, size, now_us())

    def forget_owner(self, owner: str) -> None:
        """The owner's blobs were deleted: nothing cached of them may vouch for a chunk now."""
        for key in [k for k in self._chunks if k[0] == owner]:
            del self._chunks[key]
        self._allowed.clear()

    async def _chunk(self, owner: str, digest: str) -> ChunkInfo:
        key = (owner, digest)
        info = self._chunks.get(key)
        if info is not None:
            self._chunks.move_to_end(key)
            return info
        data = bytearray()
        try:
            async for _, piece in self._blobs.read(owner, [digest]):
                data += piece
        except KeyError:
            raise errors.InvalidWorkspace("workspace.chunk_digests", f"manifest chunk {digest} is not stored") from None
        try:
            info = self._codec.parse_chunk(bytes(data))
        except ValueError as problem:
            raise errors.InvalidWorkspace("workspace.chunk_digests", f"manifest chunk {digest}: {problem}") from None
        missing = await self._blobs.missing(owner, list(dict.fromkeys(info.file_digests)))
        if missing:
            raise errors.InvalidWorkspace(
                "workspace.chunk_digests",
                f"manifest chunk {digest} names blob {missing[0]}, which is not stored ({len(missing)} missing); "
                "upload it with PutBlobs first",
            )
        self._chunks[key] = info
        if len(self._chunks) > _CHUNKS_CACHED:
            self._chunks.popitem(last=False)
        return info

    async def _named_by(self, owner: str, checkpoint: Checkpoint) -> frozenset[str]:
        key = (checkpoint.session_id, checkpoint.seq)
        named = self._allowed.get(key)
        if named is None:
            digests = set(checkpoint.chunk_digests)
            for digest in checkpoint.chunk_digests:
                digests.update((await self._chunk(owner, digest)).file_digests)
            named = self._allowed[key] = frozenset(digests)
            if len(self._allowed) > _SESSIONS_CACHED:
                self._allowed.popitem(last=False)
        return named


def _check_digests(field: str, digests: list[str]) -> None:
    if len(digests) > MAX_DIGESTS_PER_CALL:
        raise errors.InvalidArgument(field, f"names {len(digests)} digests; at most {MAX_DIGESTS_PER_CALL} per call")
    for digest in digests:
        if not _DIGEST.match(digest):
            raise errors.InvalidWorkspace(field, f"{digest[:80]!r} is not a lowercase hex SHA-256 digest")
