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

A session bundle carries its checkpoints' blobs (docs/bundles.md): `export_pieces` streams them
out, `store_imported` stores an import's under the importing owner, and `check_imported` checks
each imported checkpoint as `prepare` checks a worker's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from . import errors
from .access import Limits
from .model import Checkpoint, now_us
from .ports import BlobMismatch, BlobStore, ChunkCodec, ChunkInfo, SessionReader

log = logging.getLogger("tether.control_plane.workspaces")

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: Digests one FindMissingBlobs or GetBlobs call may name.
MAX_DIGESTS_PER_CALL = 10_000
_CHUNKS_CACHED = 4096
_SESSIONS_CACHED = 256

#: Largest piece of a blob handed out at once (a bundle's `blob` line carries one).
MAX_PIECE_BYTES = 1 << 20
_UPLOAD = "upload it with PutBlobs first"

# An import reads blobs up to this size whole, and looks up whether the owner holds them a batch
# at a time (one query per batch instead of one per blob).
_SMALL_BLOB = 256 << 10
_IMPORT_BATCH = 500
_IMPORT_BATCH_BYTES = 4 << 20

CheckLease = Callable[[str, str, int, str], Awaitable[None]]


class ImportedBlobMismatch(BlobMismatch):
    """A blob of an imported bundle whose content is not what its digest or size says."""

    def __init__(self, digest: str, message: str) -> None:
        super().__init__(message)
        self.digest = digest


class _Wording(NamedTuple):
    """How a manifest check names what it checks, and what to do about a refusal."""

    workspace: str  # "the workspace of session ..."
    missing: str  # for a blob that is not stored
    fix: str  # for a limit


class Workspaces:
    def __init__(
        self, reader: SessionReader, blobs: BlobStore, codec: ChunkCodec, limits: Limits, check_lease: CheckLease
    ) -> None:
        self._reader = reader
        self._blobs = blobs
        self._codec = codec
        self._limits = limits
        self._check_lease = check_lease
        # (owner, digest): a chunk checked, and its size in bytes
        self._chunks: OrderedDict[tuple[str, str], tuple[ChunkInfo, int]] = OrderedDict()
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
        where = _Wording(
            f"the workspace of session {session_id!r}",
            "upload it with PutBlobs first",
            "list what need not move in .tetherignore. The session keeps its previous checkpoint",
        )
        files, size, _ = await self._check_manifest(owner, chunk_digests, file_count, total_bytes, where)
        turn_id = await self._reader.turn_ended_upto(session_id, seq)
        return Checkpoint(session_id, seq, turn_id, tuple(chunk_digests), files, size, now_us())

    async def _check_manifest(
        self, owner: str, chunk_digests: list[str], file_count: int, total_bytes: int, where: _Wording
    ) -> tuple[int, int, list[ChunkInfo]]:
        """Files and bytes of a manifest whose chunks, and the blobs they name, the owner holds,
        whose counts are what its chunks hold, within the workspace limits; and its chunks."""
        # No touch: what FindMissingBlobs found is marked used already, and what the session's
        # earlier checkpoints name is kept by them.
        missing = (
            await self._blobs.missing(owner, list(dict.fromkeys(chunk_digests)), touch=False) if chunk_digests else []
        )
        if missing:
            raise errors.InvalidWorkspace(
                "workspace.chunk_digests",
                f"manifest chunk {missing[0]} is not stored ({len(missing)} missing); {where.missing}",
            )
        files = size = 0
        infos = []
        for digest in chunk_digests:
            info = (await self._checked_chunk(owner, digest, where.missing))[0]
            files += info.file_count
            size += info.total_bytes
            infos.append(info)
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
                f"{where.workspace} holds {size} bytes; {where.fix}",
            )
        if files > limits.max_workspace_files:
            raise errors.WorkspaceLimitExceeded(
                "max_workspace_files",
                limits.max_workspace_files,
                f"{where.workspace} holds {files} files; {where.fix}",
            )
        return files, size, infos

    # ----------------------------------------------------------------- bundles

    async def export_pieces(
        self, owner: str, checkpoints: list[Checkpoint]
    ) -> AsyncIterator[tuple[str, int, int, bytes]]:
        """(digest, size, offset, piece) of every blob `checkpoints` name, for a bundle: their
        manifest chunks and the files those name, each blob once, streamed from the store in
        pieces of at most `MAX_PIECE_BYTES`. A file's size is its manifest entry's, checked
        against the bytes the store holds as they go out."""
        sizes: dict[str, int] = {}
        infos: list[ChunkInfo] = []
        for checkpoint in checkpoints:
            for digest in checkpoint.chunk_digests:
                if digest not in sizes:
                    info, sizes[digest] = await self._checked_chunk(owner, digest, "the session cannot be exported")
                    infos.append(info)
        for info in infos:
            for digest, size in zip(info.file_digests, info.file_sizes, strict=True):
                sizes.setdefault(digest, size)
        sent: set[str] = set()
        current, offset = "", 0
        try:
            async for digest, piece in self._blobs.read(owner, list(sizes)):
                if digest != current:
                    _check_exported(current, offset, sizes)
                    current, offset = digest, 0
                    sent.add(digest)
                size = sizes[digest]
                if not piece and offset:
                    continue
                for start in range(0, max(len(piece), 1), MAX_PIECE_BYTES):
                    part = piece[start : start + MAX_PIECE_BYTES]
                    _check_exported(digest, offset + len(part), sizes, whole=False)
                    yield digest, size, offset, part
                    offset += len(part)
        except KeyError as gone:
            raise errors.DomainError(
                f"blob {gone.args[0]} of the session's workspace checkpoints is not stored; the session cannot "
                "be exported with its workspace"
            ) from None
        _check_exported(current, offset, sizes)
        for digest in sizes:
            if digest not in sent:  # an empty blob a store keeps without a piece
                _check_exported(digest, 0, sizes)
                yield digest, 0, 0, b""

    async def store_imported(self, owner: str, blobs: AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]) -> None:
        """Store each (digest, size, chunks) of an imported bundle under `owner`, checked against
        its digest and size (`ImportedBlobMismatch` otherwise). A blob the owner holds already is
        checked and not written again, so a bad copy of it never touches the stored one; the
        others count against the owner's limits. Small blobs are read whole, a few MiB of them at
        a time, so that one query finds which of them the owner holds; a larger one streams
        through on its own."""
        used: int | None = None
        batch: list[tuple[str, int, bytes]] = []
        streaming = ""  # the larger blob whose pieces the store is reading

        async def admit(digest: str, size: int) -> None:
            nonlocal used
            if used is None:
                used = await self._blobs.usage(owner)
            self._check_blob_size(owner, digest, size, used)
            used += size

        async def flush() -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
            missing = set(await self._blobs.missing(owner, [d for d, _, _ in batch])) if batch else set()
            for digest, size, data in batch:
                _check_content(digest, size, len(data), hashlib.sha256(data).hexdigest())
                if digest in missing:
                    await admit(digest, size)
                    yield digest, size, _once(data)
            batch.clear()

        async def new_blobs() -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
            nonlocal streaming
            batched = 0
            async for digest, size, chunks in blobs:
                _check_digests("chunk", [digest])
                if size <= _SMALL_BLOB:
                    batch.append((digest, size, b"".join([chunk async for chunk in chunks])))
                    batched += size
                    if len(batch) >= _IMPORT_BATCH or batched >= _IMPORT_BATCH_BYTES:
                        async for blob in flush():
                            yield blob
                        batched = 0
                    continue
                async for blob in flush():
                    yield blob
                batched = 0
                streaming = digest
                if await self._blobs.missing(owner, [digest]):
                    await admit(digest, size)
                    yield digest, size, chunks
                else:
                    hasher = hashlib.sha256()
                    received = 0
                    async for chunk in chunks:
                        hasher.update(chunk)
                        received += len(chunk)
                    _check_content(digest, size, received, hasher.hexdigest())
                streaming = ""
            async for blob in flush():
                yield blob

        try:
            await self._blobs.put(owner, new_blobs())
        except ImportedBlobMismatch:
            raise
        except BlobMismatch as mismatch:  # the store's check of the blob it was reading
            raise ImportedBlobMismatch(streaming, str(mismatch)) from None

    async def check_imported(
        self, owner: str, seq: int, chunk_digests: list[str], file_count: int, total_bytes: int
    ) -> frozenset[str]:
        """The blobs an imported checkpoint at `seq` names (its chunks and their files), once it
        passes what `prepare` checks of a worker's: all of them held by `owner` (the bundle
        carried them, or the owner had them), paths inside the workspace, counts, limits."""
        _check_digests("workspace.chunk_digests", chunk_digests)
        where = _Wording(
            f"the workspace checkpoint at seq {seq}",
            "the bundle does not carry it and the importing owner does not hold it",
            "raise the limit on this control plane (tether serve --max-workspace-mib, --max-workspace-files)",
        )
        _, _, infos = await self._check_manifest(owner, chunk_digests, file_count, total_bytes, where)
        named = set(chunk_digests)
        for info in infos:
            named.update(info.file_digests)
        return frozenset(named)

    async def collect_garbage(self, owner: str, grace_s: float) -> tuple[int, int]:
        """Delete the owner's blobs that no checkpoint names (its sessions were deleted, or
        its files changed) and that nothing used within `grace_s` (a checkpoint being uploaded
        uses its blobs: PutBlobs stores them and FindMissingBlobs and the manifest check find
        them). Returns how many blobs and bytes went."""
        keep: set[str] = set()
        for digest in await self._reader.checkpoint_chunks_of(owner):
            keep.add(digest)
            cached = self._chunks.get((owner, digest))
            if cached is not None:
                keep.update(cached[0].file_digests)
                continue
            data = bytearray()
            try:
                async for _, piece in self._blobs.read(owner, [digest]):
                    data += piece
                keep.update(self._codec.parse_chunk(bytes(data)).file_digests)
            except (KeyError, ValueError):
                continue  # a chunk not stored, or unreadable, names nothing that could be kept
        count, size = await self._blobs.collect(owner, keep, now_us() - int(grace_s * 1e6))
        if count:
            log.info("workspace blobs of owner %r collected: %d blobs, %d bytes", owner, count, size)
        return count, size

    async def collect_forever(self, interval_s: float, grace_s: float) -> None:
        """Collect every owner's unused blobs every `interval_s` (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                for owner in await self._blobs.owners():
                    await self.collect_garbage(owner, grace_s)
            except errors.DomainError as problem:
                log.warning("workspace blob collection failed: %s", problem)

    def forget_owner(self, owner: str) -> None:
        """The owner's blobs were deleted: nothing cached of them may vouch for a chunk now."""
        for key in [k for k in self._chunks if k[0] == owner]:
            del self._chunks[key]
        self._allowed.clear()

    async def _checked_chunk(self, owner: str, digest: str, missing_hint: str) -> tuple[ChunkInfo, int]:
        """A stored manifest chunk's entries, checked, and its size in bytes."""
        key = (owner, digest)
        cached = self._chunks.get(key)
        if cached is not None:
            self._chunks.move_to_end(key)
            return cached
        data = bytearray()
        try:
            async for _, piece in self._blobs.read(owner, [digest]):
                data += piece
        except KeyError:
            raise errors.InvalidWorkspace(
                "workspace.chunk_digests", f"manifest chunk {digest} is not stored; {missing_hint}"
            ) from None
        try:
            info = self._codec.parse_chunk(bytes(data))
        except ValueError as problem:
            raise errors.InvalidWorkspace("workspace.chunk_digests", f"manifest chunk {digest}: {problem}") from None
        missing = await self._blobs.missing(owner, list(dict.fromkeys(info.file_digests)), touch=False)
        if missing:
            raise errors.InvalidWorkspace(
                "workspace.chunk_digests",
                f"manifest chunk {digest} names blob {missing[0]}, which is not stored ({len(missing)} missing); "
                f"{missing_hint}",
            )
        cached = self._chunks[key] = (info, len(data))
        if len(self._chunks) > _CHUNKS_CACHED:
            self._chunks.popitem(last=False)
        return cached

    async def _named_by(self, owner: str, checkpoint: Checkpoint) -> frozenset[str]:
        key = (checkpoint.session_id, checkpoint.seq)
        named = self._allowed.get(key)
        if named is None:
            digests = set(checkpoint.chunk_digests)
            for digest in checkpoint.chunk_digests:
                digests.update((await self._checked_chunk(owner, digest, _UPLOAD))[0].file_digests)
            named = self._allowed[key] = frozenset(digests)
            if len(self._allowed) > _SESSIONS_CACHED:
                self._allowed.popitem(last=False)
        return named


def _check_exported(digest: str, offset: int, sizes: dict[str, int], *, whole: bool = True) -> None:
    """An exported blob's bytes (so far, or `whole`) agree with the size the bundle gives it."""
    if digest and (offset > sizes[digest] or (whole and offset != sizes[digest])):
        raise errors.DomainError(
            f"blob {digest} holds {'at least ' if not whole else ''}{offset} bytes but its manifest entry says "
            f"{sizes[digest]}; the session's workspace checkpoints are inconsistent and cannot be exported"
        )


def _check_content(digest: str, size: int, received: int, sha256: str) -> None:
    if received != size or sha256 != digest:
        what = f"{received} bytes" if received != size else f"content with SHA-256 {sha256}"
        raise ImportedBlobMismatch(digest, f"blob {digest} should be {size} bytes with that SHA-256 but {what} arrived")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _check_digests(field: str, digests: list[str]) -> None:
    if len(digests) > MAX_DIGESTS_PER_CALL:
        raise errors.InvalidArgument(field, f"names {len(digests)} digests; at most {MAX_DIGESTS_PER_CALL} per call")
    for digest in digests:
        if not _DIGEST.match(digest):
            raise errors.InvalidWorkspace(field, f"{digest[:80]!r} is not a lowercase hex SHA-256 digest")
