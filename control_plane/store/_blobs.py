"""The embedded blob store: workspace blobs as rows, in pieces of at most 1 MiB.

The domain's `BlobStore` port on the control plane's own database, so a default install needs
nothing else. Blobs are written outside the group-commit writer, in transactions of a few MiB
of pieces, so a 100 MiB upload never holds SQLite's write lock for long and turns keep
committing between them. Small blobs share a transaction (a 10,000-file upload is
a few dozen commits, not tens of thousands). A blob's `blobs` row is inserted in the
transaction of its last piece, once the SHA-256 of what arrived is its name: until then it does
not exist for `missing` or `read`. Pieces of an upload that failed half-way stay until the same blob is
uploaded again (they are overwritten) or the owner's data is purged. The pieces of a blob that is
stored whole are never rewritten nor dropped by another upload of it, whatever that one sends
(what a failed one wrote past the blob's end is dropped), and a read skips any piece past a
blob's end.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Exists, Table, and_, case, delete, exists, func, literal_column, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..domain import errors
from ..domain.model import now_us
from ..domain.ports import BlobMismatch
from ._schema import BlobChunkRow, BlobRow, table_of
from ._whole import runs_to_the_end

_blobs = table_of(BlobRow)
_pieces = table_of(BlobChunkRow)

#: Largest piece stored in one row.
PIECE_BYTES = 1 << 20
# Digests per IN (...) query.
_BATCH = 500
# What one read of pieces holds in memory, at most (or one piece, if larger).
_PAGE_BYTES = 4 * PIECE_BYTES
# An upload commits every few MiB (or rows): small transactions keep SQLite's write lock short.
_FLUSH_BYTES = 4 << 20
_FLUSH_ROWS = 1000


class _Batch:
    """Pieces and blob rows waiting for one transaction."""

    def __init__(self) -> None:
        self.pieces: list[dict[str, object]] = []
        self.blobs: list[dict[str, object]] = []
        self.bytes = 0

    def piece(self, owner: str, digest: str, index: int, data: bytes) -> None:
        self.pieces.append({"owner_id": owner, "digest": digest, "idx": index, "data": data})
        self.bytes += len(data)

    def blob(self, owner: str, digest: str, size: int) -> None:
        self.blobs.append({"owner_id": owner, "digest": digest, "size": size, "used_time_us": now_us()})

    @property
    def full(self) -> bool:
        return self.bytes >= _FLUSH_BYTES or len(self.pieces) + len(self.blobs) >= _FLUSH_ROWS

    def clear(self) -> None:
        self.pieces.clear()
        self.blobs.clear()
        self.bytes = 0


def _stored(owner: Any, digest: Any) -> Exists:
    """Whether the blob has its `blobs` row (it is stored whole)."""
    return exists().where(and_(_blobs.c.owner_id == owner, _blobs.c.digest == digest))


@dataclass(frozen=True)
class _Page:
    """What one read of `SqlBlobStore.read` fetches: these pieces of each of `digests` (whole
    small blobs, or a range of one large blob's pieces)."""

    digests: list[str]
    pieces: range


def _piece_count(size: int) -> int:
    return max(1, -(-size // PIECE_BYTES))  # an empty blob is one empty piece


def _pages(batch: list[str], sizes: dict[str, int]) -> Iterator[_Page]:
    """`batch`'s blobs in pages of at most `_PAGE_BYTES`: small blobs together, a larger one in
    ranges of its pieces."""
    group: list[str] = []
    held = 0
    per_page = _PAGE_BYTES // PIECE_BYTES
    for digest in batch:
        size = sizes[digest]
        if group and held + size > _PAGE_BYTES:
            yield _Page(group, range(per_page))
            group, held = [], 0
        if size <= _PAGE_BYTES:
            group.append(digest)
            held += size
            continue
        for first in range(0, _piece_count(size), per_page):
            yield _Page([digest], range(first, first + per_page))
    if group:
        yield _Page(group, range(per_page))  # bounded even by stray pieces past their ends


def _by_digest(
    rows: list[tuple[str, int, bytes]], page: _Page, sizes: dict[str, int]
) -> Iterator[tuple[str, list[bytes]]]:
    """The page's rows per blob, checked whole: every piece the page asked for is there, in
    order (else the blob went while it was read). Pieces past a blob's size are not its own and
    are skipped. What a piece holds is its readers' to check (a worker checks each blob's
    SHA-256, an export each blob's size)."""
    pieces: dict[str, list[tuple[int, bytes]]] = {d: [] for d in page.digests}
    for digest, index, data in rows:
        pieces[digest].append((index, data))
    for digest in page.digests:
        count = _piece_count(sizes[digest])
        got = [(i, data) for i, data in pieces[digest] if i < count]  # past the end: a cut-off upload's
        if [i for i, _ in got] != list(range(page.pieces.start, min(page.pieces.stop, count))):
            raise KeyError(digest)
        yield digest, [data for _, data in got]


class SqlBlobStore:
    """Blobs in the `blobs` and `blob_chunks` tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = engine.dialect.name
        upsert: Callable[[Table], Any]
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        piece = upsert(_pieces)
        # A piece already stored is rewritten only while its blob is not: an upload of a blob
        # that is stored whole (two sessions with the same file, racing) never touches it, even
        # when what it sends turns out not to match.
        self._put_piece = piece.on_conflict_do_update(
            index_elements=[_pieces.c.owner_id, _pieces.c.digest, _pieces.c.idx],
            set_={"data": piece.excluded.data},
            # The conflict's own key, as both dialects name the proposed row; a column of
            # `piece.excluded` would be rendered as a table of the subquery's FROM.
            where=~_stored(literal_column("excluded.owner_id"), literal_column("excluded.digest")),
        )
        blob = upsert(_blobs)
        self._put_blob = blob.on_conflict_do_update(
            index_elements=[_blobs.c.owner_id, _blobs.c.digest], set_={"used_time_us": blob.excluded.used_time_us}
        )

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise errors.Unavailable(f"the database did not answer: {type(exc).__name__}") from exc

    @runs_to_the_end
    async def missing(self, owner: str, digests: list[str], *, touch: bool = True) -> list[str]:
        held: set[str] = set()
        now = now_us()
        async with self._tx() as conn:
            for start in range(0, len(digests), _BATCH):
                batch = digests[start : start + _BATCH]
                query = select(_blobs.c.digest).where(and_(_blobs.c.owner_id == owner, _blobs.c.digest.in_(batch)))
                found = [r.digest for r in await conn.execute(query)]
                if found and touch:  # asked for by a checkpoint: used now, spared by the collector's grace
                    await conn.execute(
                        update(_blobs)
                        .where(and_(_blobs.c.owner_id == owner, _blobs.c.digest.in_(found)))
                        .values(used_time_us=now)
                    )
                held.update(found)
        return [d for d in digests if d not in held]

    async def put(self, owner: str, blobs: AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]) -> None:
        batch = _Batch()
        async for digest, size, chunks in blobs:
            hasher = hashlib.sha256()
            received = index = 0
            pending = bytearray()
            async for chunk in chunks:
                hasher.update(chunk)
                received += len(chunk)
                if received > size:
                    break
                pending += chunk
                while len(pending) >= PIECE_BYTES:
                    batch.piece(owner, digest, index, bytes(pending[:PIECE_BYTES]))
                    del pending[:PIECE_BYTES]
                    index += 1
                    if batch.full:
                        await self._flush(batch)
            if received != size or hasher.hexdigest() != digest:
                await self._flush(batch)
                await self._drop_pieces(owner, digest)
                what = f"{received} bytes" if received != size else f"content with SHA-256 {hasher.hexdigest()}"
                raise BlobMismatch(f"blob {digest} should be {size} bytes with that SHA-256 but {what} arrived")
            if pending or index == 0:
                batch.piece(owner, digest, index, bytes(pending))
            batch.blob(owner, digest, size)
            if batch.full:
                await self._flush(batch)
        await self._flush(batch)

    async def _flush(self, batch: _Batch) -> None:
        """One transaction: the batch's pieces, then the rows of the blobs whose last piece is
        among them or already stored (a blob is visible only once all of it is durable)."""
        if not batch.pieces and not batch.blobs:
            return
        async with self._tx() as conn:
            if batch.pieces:
                await conn.execute(self._put_piece, batch.pieces)
            if batch.blobs:
                await conn.execute(self._put_blob, batch.blobs)
        batch.clear()

    async def _drop_pieces(self, owner: str, digest: str) -> None:
        """Drop what a failed upload left: every piece of the blob, or, if it is stored whole
        (meanwhile, or from the start), the pieces past its end."""
        pieces = (  # `_piece_count(size)` of the stored blob, in SQL: one statement, no race
            select(case((_blobs.c.size == 0, 1), else_=(_blobs.c.size + (PIECE_BYTES - 1)) // PIECE_BYTES))
            .where(and_(_blobs.c.owner_id == owner, _blobs.c.digest == digest))
            .scalar_subquery()
        )
        async with self._tx() as conn:
            await conn.execute(
                delete(_pieces).where(
                    and_(
                        _pieces.c.owner_id == owner,
                        _pieces.c.digest == digest,
                        _pieces.c.idx >= func.coalesce(pieces, 0),
                    )
                )
            )

    async def read(self, owner: str, digests: list[str]) -> AsyncIterator[tuple[str, bytes]]:
        """A page of pieces at a time (at most `_PAGE_BYTES`, or one piece larger), each page a
        read of its own that runs to its end (`_whole.py`): no query is open while the caller
        holds a piece, so a caller that goes away between two never cuts one off. A blob
        collected between two pages, or missing a piece, ends the read with `KeyError`, as one
        never stored does."""
        for start in range(0, len(digests), _BATCH):
            batch = sorted(set(digests[start : start + _BATCH]))
            sizes = await self._sizes(owner, batch)
            missing = [d for d in batch if d not in sizes]
            if missing:
                raise KeyError(missing[0])
            for page in _pages(batch, sizes):
                rows = await self._page(owner, page)
                for digest, pieces in _by_digest(rows, page, sizes):
                    for piece in pieces:
                        yield digest, piece

    @runs_to_the_end
    async def _sizes(self, owner: str, batch: list[str]) -> dict[str, int]:
        async with self._tx() as conn:
            query = select(_blobs.c.digest, _blobs.c.size).where(
                and_(_blobs.c.owner_id == owner, _blobs.c.digest.in_(batch))
            )
            return {r.digest: r.size for r in await conn.execute(query)}

    @runs_to_the_end
    async def _page(self, owner: str, page: _Page) -> list[tuple[str, int, bytes]]:
        """The page's pieces as (digest, index, data), in digest then index order."""
        query = select(_pieces.c.digest, _pieces.c.idx, _pieces.c.data).where(
            and_(
                _pieces.c.owner_id == owner,
                _pieces.c.digest.in_(page.digests),
                _pieces.c.idx >= page.pieces.start,
                _pieces.c.idx < page.pieces.stop,
            )
        )
        async with self._tx() as conn:
            rows = await conn.execute(query.order_by(_pieces.c.digest, _pieces.c.idx))
            return [(r.digest, r.idx, bytes(r.data)) for r in rows]

    @runs_to_the_end
    async def usage(self, owner: str) -> int:
        async with self._tx() as conn:
            total = (await conn.execute(select(func.sum(_blobs.c.size)).where(_blobs.c.owner_id == owner))).scalar()
        return int(total or 0)

    async def collect(self, owner: str, keep: set[str], used_before_us: int) -> tuple[int, int]:
        unused: list[tuple[str, int]] = []
        async with self._tx() as conn:
            rows = await conn.execute(
                select(_blobs.c.digest, _blobs.c.size).where(
                    and_(_blobs.c.owner_id == owner, _blobs.c.used_time_us < used_before_us)
                )
            )
            unused = [(r.digest, r.size) for r in rows if r.digest not in keep]
        sizes = dict(unused)
        gone: list[str] = []
        for start in range(0, len(unused), _BATCH):
            batch = [d for d, _ in unused[start : start + _BATCH]]
            async with self._tx() as conn:
                # The row first, and only if still unused: from then on the blob does not exist
                # for `missing` or `read`; then the pieces of exactly the rows deleted.
                deleted = [
                    r.digest
                    for r in await conn.execute(
                        delete(_blobs)
                        .where(
                            and_(
                                _blobs.c.owner_id == owner,
                                _blobs.c.digest.in_(batch),
                                _blobs.c.used_time_us < used_before_us,
                            )
                        )
                        .returning(_blobs.c.digest)
                    )
                ]
                if deleted:
                    await conn.execute(
                        delete(_pieces).where(and_(_pieces.c.owner_id == owner, _pieces.c.digest.in_(deleted)))
                    )
            gone.extend(deleted)
        return len(gone), sum(sizes[d] for d in gone)

    @runs_to_the_end
    async def owners(self) -> list[str]:
        async with self._tx() as conn:
            return [r.owner_id for r in await conn.execute(select(_blobs.c.owner_id).distinct())]

    async def delete_owner(self, owner: str) -> int:
        async with self._tx() as conn:
            count = (
                await conn.execute(select(func.count()).select_from(_blobs).where(_blobs.c.owner_id == owner))
            ).scalar()
            await conn.execute(delete(_pieces).where(_pieces.c.owner_id == owner))
            await conn.execute(delete(_blobs).where(_blobs.c.owner_id == owner))
        return int(count or 0)
