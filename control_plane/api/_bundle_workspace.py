"""A bundle's workspace (docs/bundles.md, version 2): its `checkpoint` lines, the `blob` lines
that carry the blobs they name, and an import's way of storing and checking them.

A `checkpoint` line is a session's workspace checkpoint: its `seq`, the `turn_id` of the last
turn that ended by then, `create_time`, and the manifest as a `WorkspaceManifest`. A `blob` line
is a `BlobChunk`: one piece (at most 1 MiB) of one blob, a blob's pieces on consecutive lines from
offset 0 to its size. An import stores each blob under the importing owner as its pieces arrive
(`Workspaces.store_imported` checks its SHA-256 and size), so no blob is ever whole in memory,
then checks every checkpoint against what the owner now holds before the session is stored.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb

from ..domain import errors
from ..domain._workspaces import MAX_DIGESTS_PER_CALL, MAX_PIECE_BYTES, ImportedBlobMismatch
from ..domain.model import Checkpoint

if TYPE_CHECKING:
    from ..domain._bundles import SessionBundle
    from ..domain._workspaces import Workspaces
    from ._bundles import BundleReader

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: The longest `blob` line: a 1 MiB piece in base64, with its digest, size and offset.
MAX_BLOB_LINE = (MAX_PIECE_BYTES + 2) // 3 * 4 + 512


class BlobPiece(NamedTuple):
    """One `blob` line's piece of a blob."""

    digest: str
    size: int
    offset: int
    data: bytes


# ----------------------------------------------------------------- writing


def checkpoint_json(c: Checkpoint) -> dict[str, Any]:
    created = Timestamp()
    created.FromMicroseconds(c.create_time_us)
    manifest = pb.WorkspaceManifest(chunk_digests=c.chunk_digests, file_count=c.file_count, total_bytes=c.total_bytes)
    return {
        "seq": str(c.seq),
        "turn_id": c.turn_id,
        "create_time": created.ToJsonString(),
        "workspace": json_format.MessageToDict(manifest, preserving_proto_field_name=True),
    }


def blob_json(digest: str, size: int, offset: int, piece: bytes) -> dict[str, Any]:
    chunk = wpb.BlobChunk(digest=digest, size=size, offset=offset, data=piece)
    return json_format.MessageToDict(chunk, preserving_proto_field_name=True)


# ----------------------------------------------------------------- reading


def parse_checkpoint(n: int, body: Any, turn_ids: set[str], after_seq: int, last_seq: int) -> Checkpoint:
    """A `checkpoint` line, checked against the bundle's lines before it: a seq past the previous
    checkpoint's and at most the last event's, a turn of the bundle (or none), valid digests."""
    if not isinstance(body, dict):
        raise errors.InvalidBundle(n, "the checkpoint must be a JSON object")
    seq = body.get("seq", 0)
    if isinstance(seq, str) and seq.isdigit():
        seq = int(seq)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise errors.InvalidBundle(n, f"the checkpoint's seq {seq!r} is not a whole number")
    if seq <= after_seq:
        raise errors.InvalidBundle(
            n, f"checkpoint at seq {seq} after one at seq {after_seq}: they come by seq, once each"
        )
    if seq > last_seq:
        raise errors.InvalidBundle(n, f"checkpoint at seq {seq} is past the bundle's last event ({last_seq})")
    turn_id = body.get("turn_id", "")
    if not isinstance(turn_id, str) or (turn_id and turn_id not in turn_ids):
        raise errors.InvalidBundle(n, f"checkpoint at seq {seq} names turn {turn_id!r}, which the bundle does not hold")
    created = Timestamp()
    manifest = pb.WorkspaceManifest()
    try:
        if body.get("create_time"):
            json_format.ParseDict(body["create_time"], created)
        json_format.ParseDict(body.get("workspace", {}), manifest, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise errors.InvalidBundle(n, f"not a valid checkpoint: {exc}") from None
    digests = list(manifest.chunk_digests)
    if len(digests) > MAX_DIGESTS_PER_CALL:
        raise errors.InvalidBundle(
            n, f"checkpoint at seq {seq} has {len(digests)} manifest chunks; at most {MAX_DIGESTS_PER_CALL}"
        )
    for digest in digests:
        if not _HEX64.match(digest):
            raise errors.InvalidBundle(
                n, f"checkpoint at seq {seq}: {digest[:80]!r} is not a lowercase hex SHA-256 digest"
            )
    return Checkpoint(
        "", seq, turn_id, tuple(digests), manifest.file_count, manifest.total_bytes, created.ToMicroseconds()
    )


def parse_blob(n: int, body: Any, open_blob: BlobPiece | None, seen: dict[str, int]) -> BlobPiece:
    """A `blob` line's piece: the next of `open_blob` (its digest and size, `offset` where the
    next piece starts) when one is unfinished, else the first of a blob not seen before."""
    if not isinstance(body, dict):
        raise errors.InvalidBundle(n, "the blob must be a JSON object")
    chunk = wpb.BlobChunk()
    try:
        json_format.ParseDict(body, chunk, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise errors.InvalidBundle(n, f"not a valid blob piece: {str(exc)[:200]}") from None
    digest, size, offset, data = chunk.digest, chunk.size, chunk.offset, chunk.data
    if not _HEX64.match(digest):
        raise errors.InvalidBundle(n, f"{digest[:80]!r} is not a lowercase hex SHA-256 digest")
    if len(data) > MAX_PIECE_BYTES:
        raise errors.InvalidBundle(n, f"a piece of blob {digest} holds {len(data)} bytes; at most {MAX_PIECE_BYTES}")
    if open_blob is not None:
        if (digest, size, offset) != (open_blob.digest, open_blob.size, open_blob.offset):
            raise errors.InvalidBundle(n, unfinished(open_blob))
    elif offset != 0:
        raise errors.InvalidBundle(n, f"blob {digest} starts at offset {offset}; a blob's first piece is at 0")
    elif digest in seen:
        raise errors.InvalidBundle(n, f"blob {digest} appears twice (first at line {seen[digest]})")
    if offset + len(data) > size:
        raise errors.InvalidBundle(n, f"this piece of blob {digest} runs past its size, {size} bytes")
    if not data and size:
        raise errors.InvalidBundle(n, f"a piece of blob {digest} holds no bytes")
    return BlobPiece(digest, size, offset, data)


def unfinished(blob: BlobPiece) -> str:
    return (
        f"blob {blob.digest} stops at {blob.offset} of its {blob.size} bytes: its next piece (offset "
        f"{blob.offset}) must come next"
    )


# ----------------------------------------------------------------- importing


async def read_bundle(
    reader: BundleReader, chunks: AsyncIterable[bytes], workspaces: Workspaces, owner: str
) -> SessionBundle:
    """Read an import's bundle, storing the blobs it carries under `owner` as they arrive; then
    check each checkpoint against what `owner` holds (the bundle's blobs and its own), and that
    every blob the bundle carries is one its checkpoints name. A refusal names the line; blobs
    already stored stay (content-addressed, they hold nothing of the session)."""
    try:
        await workspaces.store_imported(owner, _blobs(reader, reader.read(chunks)))
    except ImportedBlobMismatch as mismatch:
        raise errors.InvalidBundle(reader.blob_lines.get(mismatch.digest, reader.line), str(mismatch)) from None
    bundle = reader.finish()
    named: set[str] = set()
    for line, c in zip(reader.checkpoint_lines, bundle.checkpoints, strict=True):
        try:
            named |= await workspaces.check_imported(owner, c.seq, list(c.chunk_digests), c.file_count, c.total_bytes)
        except errors.InvalidWorkspace as refused:
            raise errors.InvalidBundle(
                line, f"checkpoint at seq {c.seq}: {refused.violations[0].description}"
            ) from None
    for digest, line in reader.blob_lines.items():
        if digest not in named:
            raise errors.InvalidBundle(line, f"blob {digest} is named by no checkpoint of the bundle")
    return bundle


async def _blobs(
    reader: BundleReader, pieces: AsyncIterator[BlobPiece]
) -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
    """The bundle's blobs, each as (digest, size, its pieces), read off the lines as the store
    consumes them (the reader has checked that each blob's pieces follow on in order)."""
    head = await anext(pieces, None)
    while head is not None:
        body = _rest(reader, head, pieces)
        yield head.digest, head.size, body
        async for _ in body:  # what the consumer left of this blob
            pass
        head = await anext(pieces, None)


async def _rest(reader: BundleReader, head: BlobPiece, pieces: AsyncIterator[BlobPiece]) -> AsyncIterator[bytes]:
    yield head.data
    offset = head.offset + len(head.data)
    while offset < head.size:
        piece = await anext(pieces, None)
        if piece is None:
            raise errors.InvalidBundle(
                reader.line, f"the bundle ends inside blob {head.digest}: it is truncated; export it again"
            )
        yield piece.data
        offset += len(piece.data)
