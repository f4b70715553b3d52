"""Workspace checkpoints on the worker: the files of a session, moving with it.

Owns each held session's `SessionWorkspace` (its directory, the gate that keeps turns out while
the workspace is scanned or restored, and the blobs the control plane is known to hold) and the
worker's scanners, kept per session id across epochs so a session that comes back does not
re-read unchanged files. The file-system work is `_workspace` (scan) and `_workspace_restore`
(restore); this module runs it in a thread and moves blobs over the link:

- a checkpoint: the scan runs with the gate held (captured with the history, so files and
  history agree), then the blobs the control plane lacks (FindMissingBlobs) are uploaded from
  their staged copies (PutBlobs) before the snapshot that names the manifest is sent;
- a restore: before the runtime starts on a worker that takes the session, the manifest's chunks
  and the blobs the workspace lacks are downloaded (GetBlobs) and the workspace is made to match.
  Any failure raises `WorkspaceError`: the caller fails closed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tether.execution_worker._context import Link
from tether.execution_worker._errors import describe, error_reason
from tether.execution_worker._workspace import (
    DEFAULT_IGNORES,
    FILE,
    Checkpoint,
    WorkspaceError,
    WorkspaceScanner,
)
from tether.execution_worker._workspace_restore import RestoreStats, restore
from tether.v1 import resources_pb2, worker_service_pb2

_log = logging.getLogger("tether.execution_worker")

#: Told a failed download call's error: waits out a backoff and says whether to call again.
RetryPolicy = Callable[[grpc.aio.AioRpcError], Awaitable[bool]]

#: Digests per FindMissingBlobs / GetBlobs call (the control plane's bound).
DIGESTS_PER_CALL = 10_000
#: Scanners (stat caches) kept for sessions no longer held here.
SCANNERS_KEPT = 64

#: The control plane's reasons for refusing a checkpoint (the session keeps its previous one).
WORKSPACE_LIMIT_EXCEEDED = "WORKSPACE_LIMIT_EXCEEDED"
INVALID_WORKSPACE = "INVALID_WORKSPACE"


class WorkspaceGate:
    """Held while a workspace is scanned; a turn waits until it is free before it runs."""

    def __init__(self) -> None:
        self._holders = 0
        self._free = asyncio.Event()
        self._free.set()

    def hold(self) -> None:
        self._holders += 1
        self._free.clear()

    def release(self) -> None:
        self._holders -= 1
        if self._holders <= 0:
            self._holders = 0
            self._free.set()

    async def wait_free(self) -> None:
        await self._free.wait()


@dataclass(eq=False)
class SessionWorkspace:
    """A held session's workspace."""

    session_id: str
    root: Path
    scanner: WorkspaceScanner
    gate: WorkspaceGate = field(default_factory=WorkspaceGate)
    #: Blobs the control plane is known to hold (from a stored checkpoint or a restore).
    confirmed: set[str] = field(default_factory=set)
    #: Checkpoint uploads of this session go one at a time, in order.
    upload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: What the last restore did, reported with the next turn's start.
    restored: RestoreStats | None = None
    #: The chunks of the session's latest checkpoint the control plane holds (restored here or
    #: stored from here); () when it has none, which is what an empty workspace scans to.
    stored_chunks: tuple[str, ...] = ()


class WorkspaceLimit(Exception):
    """The control plane refused a checkpoint over one of the owner's workspace limits."""


class Checkpoints:
    def __init__(self, *, worker_id: str, link: Link, state_dir: Path, ignores: Iterable[str] = DEFAULT_IGNORES):
        self._worker_id = worker_id
        self._link = link
        self._stage_root = state_dir / "stage"
        self.ignores = tuple(ignores)
        self._scanners: collections.OrderedDict[str, WorkspaceScanner] = collections.OrderedDict()

    def open(self, session_id: str, root: Path) -> SessionWorkspace:
        """The workspace of a session taken at a (new) epoch, reusing its scanner if kept."""
        scanner = self._scanners.pop(session_id, None)
        if scanner is None or scanner.root != Path(os.path.abspath(root)) or scanner.ignores != self.ignores:
            scanner = WorkspaceScanner(root, ignores=self.ignores, stage_dir=self._stage_root / session_id)
        self._scanners[session_id] = scanner
        while len(self._scanners) > SCANNERS_KEPT:
            self._scanners.popitem(last=False)
        return SessionWorkspace(session_id, Path(os.path.abspath(root)), scanner)

    # -- checkpoints ------------------------------------------------------------------------------

    async def scan(self, workspace: SessionWorkspace) -> Checkpoint:
        """Scan the workspace; the caller already holds its gate (taken with the history). An
        empty workspace is scanned on the loop (microseconds, less than a thread hop); any
        other in a thread, however small it was last time: one turn can write a whole tree."""
        if _is_empty(workspace.root):
            return workspace.scanner.scan()
        return await asyncio.to_thread(workspace.scanner.scan)

    async def upload(self, workspace: SessionWorkspace, checkpoint: Checkpoint, lease_epoch: int) -> None:
        """Make every blob `checkpoint` names durable on the control plane. Raises
        `WorkspaceLimit`, `WorkspaceError` (a staged blob is gone) or the RPC error."""
        named = _named(checkpoint)
        candidates = [d for d in named if d not in workspace.confirmed]
        missing: list[str] = []
        for start in range(0, len(candidates), DIGESTS_PER_CALL):
            response = await self._link.stub.FindMissingBlobs(
                worker_service_pb2.FindMissingBlobsRequest(
                    worker_id=self._worker_id,
                    session_id=workspace.session_id,
                    lease_epoch=lease_epoch,
                    digests=candidates[start : start + DIGESTS_PER_CALL],
                )
            )
            missing.extend(response.missing_digests)
        absent = [d for d in missing if not checkpoint.blob_path(d).exists()]
        if absent:
            workspace.scanner.forget()  # the next scan stages everything again
            raise WorkspaceError(f"{len(absent)} blobs to upload are no longer staged (first {absent[0]})")
        if missing:
            try:
                await self._link.stub.PutBlobs(
                    _pieces(
                        self._worker_id,
                        workspace.session_id,
                        lease_epoch,
                        checkpoint,
                        missing,
                        self._link.lease.max_message_bytes,
                    )
                )
            except grpc.aio.AioRpcError as error:
                if error_reason(error) == WORKSPACE_LIMIT_EXCEEDED:
                    raise WorkspaceLimit(error.details() or "workspace limit") from error
                raise

    @staticmethod
    def unchanged(workspace: SessionWorkspace, checkpoint: Checkpoint) -> bool:
        """Whether `checkpoint` is the one the control plane already holds as the session's
        latest (then a snapshot need not carry it: the session keeps it)."""
        return tuple(checkpoint.manifest.chunk_digests) == workspace.stored_chunks

    def stored(self, workspace: SessionWorkspace, checkpoint: Checkpoint) -> None:
        """The snapshot naming `checkpoint` is stored: its blobs are the control plane's."""
        workspace.stored_chunks = tuple(checkpoint.manifest.chunk_digests)
        named = _named(checkpoint)
        fresh = [d for d in named if d not in workspace.confirmed]
        workspace.confirmed.update(named)
        for digest in fresh:
            try:
                os.unlink(checkpoint.blob_path(digest))
            except OSError:
                pass

    # -- restores ---------------------------------------------------------------------------------

    async def restore(
        self,
        workspace: SessionWorkspace,
        manifest: resources_pb2.WorkspaceManifest,
        lease_epoch: int,
        *,
        retry: RetryPolicy | None = None,
    ) -> RestoreStats:
        """Make the workspace match `manifest` (raises `WorkspaceError`, `LeaseLost`-worthy RPC
        errors pass through as AioRpcError). A download the control plane fails is asked again,
        for the blobs that did not arrive, while `retry(error)` says True."""
        stage = workspace.scanner.stage_dir
        await asyncio.to_thread(os.makedirs, stage, exist_ok=True)
        began = time.perf_counter()
        chunk_digests = list(manifest.chunk_digests)
        fetched = await self._download(workspace, lease_epoch, chunk_digests, stage, retry)
        entries: list[resources_pb2.WorkspaceEntry] = []
        for digest in chunk_digests:
            chunk = resources_pb2.WorkspaceManifestChunk()
            try:
                chunk.ParseFromString(await asyncio.to_thread(fetched[digest].read_bytes))
            except Exception as error:
                raise WorkspaceError(f"manifest chunk {digest} is unreadable: {error}") from None
            entries.extend(chunk.entries)
        loop = asyncio.get_running_loop()

        download_s = 0.0

        def fetch(digests: list[str]) -> Iterator[tuple[str, Path]]:
            # Called from restore's thread: the download runs on the event loop meanwhile.
            nonlocal download_s
            started = time.perf_counter()
            future = asyncio.run_coroutine_threadsafe(
                self._download(workspace, lease_epoch, digests, stage, retry), loop
            )
            landed = future.result()
            download_s += time.perf_counter() - started
            yield from landed.items()

        stats = await asyncio.to_thread(
            restore, workspace.root, entries, fetch, ignores=self.ignores, stage_dir=stage, scanner=workspace.scanner
        )
        for path in fetched.values():
            path.unlink(missing_ok=True)
        # Downloads the restore used are copied into place: nothing staged is pending upload.
        await asyncio.to_thread(workspace.scanner.staged_cleanup, set())
        workspace.confirmed = set(chunk_digests) | {e.digest for e in entries if e.kind == FILE}
        workspace.stored_chunks = tuple(chunk_digests)
        _log.info(
            "session %s: workspace restored in %.3fs, %.3fs of it downloading "
            "(%d files, %d bytes; %d written, %d bytes downloaded, %d removed)",
            workspace.session_id,
            time.perf_counter() - began,
            download_s,
            stats.file_count,
            stats.total_bytes,
            stats.files_written,
            stats.bytes_downloaded,
            stats.files_removed,
        )
        return stats

    async def _download(
        self,
        workspace: SessionWorkspace,
        lease_epoch: int,
        digests: list[str],
        stage: Path,
        retry: RetryPolicy | None = None,
    ) -> dict[str, Path]:
        """Download `digests` into `stage` (each to a temp file renamed to its digest, checked
        by the restore); returns where each landed. A call that fails is made again for the
        blobs it did not bring, while `retry(error)` says True."""
        landed: dict[str, Path] = {}
        for start in range(0, len(digests), DIGESTS_PER_CALL):
            batch = digests[start : start + DIGESTS_PER_CALL]
            while True:
                wanted = [d for d in batch if d not in landed]
                try:
                    await self._get_blobs(workspace, lease_epoch, wanted, stage, landed)
                    break  # what the call left out is checked below; only a failed call is made again
                except grpc.aio.AioRpcError as error:
                    if retry is None or not await retry(error):
                        raise
        for digest in digests:
            if digest not in landed:
                raise WorkspaceError(f"blob {digest} of the checkpoint did not arrive")
        return landed

    async def _get_blobs(
        self, workspace: SessionWorkspace, lease_epoch: int, wanted: list[str], stage: Path, landed: dict[str, Path]
    ) -> None:
        """One GetBlobs call: each blob that arrives whole is added to `landed`; a blob cut
        off by a failed call is removed."""
        asked = set(wanted)
        call = self._link.stub.GetBlobs(
            worker_service_pb2.GetBlobsRequest(
                worker_id=self._worker_id, session_id=workspace.session_id, lease_epoch=lease_epoch, digests=wanted
            )
        )
        # Pieces are written as they come, on the loop: each is at most 128 KiB into the
        # page cache, cheaper than a thread hop apiece.
        sink = _BlobSink(stage, landed)
        try:
            async for message in call:
                for piece in message.chunks:
                    if piece.digest != sink.digest:
                        if piece.digest not in asked or piece.offset != 0 or piece.digest in landed:
                            raise WorkspaceError(
                                f"the control plane sent blob {piece.digest[:64]!r}, not one asked for"
                            )
                        sink.start(piece.digest)
                    sink.write(piece.data)
            sink.finish()
        finally:
            sink.abandon()


class _BlobSink:
    """Writes one downloaded blob at a time into the stage directory."""

    def __init__(self, stage: Path, landed: dict[str, Path]) -> None:
        self._stage = stage
        self._landed = landed
        self.digest = ""
        self._fd = -1
        self._temp = ""

    def start(self, digest: str) -> None:
        self.finish()
        self.digest = digest
        self._temp = os.path.join(self._stage, f".get-{digest}")
        self._fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def finish(self) -> None:
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        target = self._stage / self.digest
        os.replace(self._temp, target)
        self._landed[self.digest] = target

    def abandon(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            _unlink_quietly(self._temp)


def _is_empty(root: Path) -> bool:
    """Whether the directory `root` holds nothing (or is not there): one getdents."""
    try:
        with os.scandir(root) as listing:
            return next(listing, None) is None
    except OSError:
        return False


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _named(checkpoint: Checkpoint) -> list[str]:
    """Every blob a checkpoint names: its chunks and its files' contents, each once."""
    digests = dict.fromkeys(checkpoint.manifest.chunk_digests)
    digests.update(dict.fromkeys(e.digest for e in checkpoint.entries if e.kind == FILE))
    return list(digests)


def message_sizes(max_message_bytes: int) -> tuple[int, int]:
    """Pieces of a blob, and pieces in one message, that fit the control plane's messages
    (at most 128 KiB and 512 KiB)."""
    room = max(256, max_message_bytes - 4096)  # the rest of the message: digests, offsets
    return min(128 << 10, room // 2), min(512 << 10, room)


def _pieces(
    worker_id: str, session_id: str, epoch: int, checkpoint: Checkpoint, digests: list[str], max_message_bytes: int
) -> Iterator[worker_service_pb2.PutBlobsRequest]:
    """The PutBlobs stream: each blob's staged copy in pieces, small blobs several to a message
    (an empty blob is one empty piece)."""
    piece_bytes, message_bytes = message_sizes(max_message_bytes)
    message = worker_service_pb2.PutBlobsRequest(worker_id=worker_id, session_id=session_id, lease_epoch=epoch)
    size_so_far = 0
    for digest in digests:
        path = checkpoint.blob_path(digest)
        size = path.stat().st_size
        offset = 0
        with open(path, "rb") as f:
            while True:
                data = f.read(piece_bytes)
                if size_so_far + len(data) + 100 > message_bytes and (message.chunks or message.worker_id):
                    yield message
                    message, size_so_far = worker_service_pb2.PutBlobsRequest(), 0
                message.chunks.append(worker_service_pb2.BlobChunk(digest=digest, size=size, offset=offset, data=data))
                size_so_far += len(data) + 100
                offset += len(data)
                if offset >= size:
                    break
    if message.chunks or message.worker_id:
        yield message


def restore_failure(error: BaseException) -> str:
    """Why a restore failed, for the failed turn."""
    if isinstance(error, grpc.aio.AioRpcError):
        return f"workspace restore failed: {describe(error)}"
    return str(error) if str(error).startswith("workspace restore failed") else f"workspace restore failed: {error}"


__all__ = [
    "Checkpoints",
    "SessionWorkspace",
    "WorkspaceError",
    "WorkspaceGate",
    "WorkspaceLimit",
    "restore_failure",
]
