"""The embedded blob store: workspace blobs as rows, in pieces of at most 1 MiB.

The domain's `BlobStore` port on the control plane's own database, so a default install needs
nothing else. Blobs are written outside the group-commit writer: each piece is its own small
transaction, so a 100 MiB upload never holds SQLite's write lock for more than one piece and
turns keep committing between pieces. A blob's `blobs` row is inserted last, once every piece
is durable and the SHA-256 of what arrived is its name: until then it does not exist for
`missing` or `read`. Pieces of an upload that failed half-way stay until the same blob is
uploaded again (they are overwritten) or the owner's data is purged.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Table, and_, delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..domain import errors
from ..domain.model import now_us
from ..domain.ports import BlobMismatch
from ._schema import BlobChunkRow, BlobRow, table_of

_blobs = table_of(BlobRow)
_pieces = table_of(BlobChunkRow)

#: Largest piece stored in one row.
PIECE_BYTES = 1 << 20
# Digests per IN (...) query.
_BATCH = 500


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
        self._put_piece = piece.on_conflict_do_update(
            index_elements=[_pieces.c.owner_id, _pieces.c.digest, _pieces.c.idx], set_={"data": piece.excluded.data}
        )
        self._put_blob = upsert(_blobs).on_conflict_do_nothing(index_elements=[_blobs.c.owner_id, _blobs.c.digest])

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise errors.Unavailable(f"the database did not answer: {type(exc).__name__}") from exc

    async def missing(self, owner: str, digests: list[str]) -> list[str]:
        held: set[str] = set()
        async with self._tx() as conn:
            for start in range(0, len(digests), _BATCH):
                batch = digests[start : start + _BATCH]
                query = select(_blobs.c.digest).where(and_(_blobs.c.owner_id == owner, _blobs.c.digest.in_(batch)))
                held.update(r.digest for r in await conn.execute(query))
        return [d for d in digests if d not in held]

    async def put(self, owner: str, digest: str, size: int, chunks: AsyncIterator[bytes]) -> None:
        hasher = hashlib.sha256()
        received = 0
        index = 0
        pending = bytearray()
        known = not await self.missing(owner, [digest])
        async for chunk in chunks:
            hasher.update(chunk)
            received += len(chunk)
            if received > size:
                break
            if known:
                continue  # read to the end (the caller's stream must be consumed), store nothing
            pending += chunk
            while len(pending) >= PIECE_BYTES:
                await self._store_piece(owner, digest, index, bytes(pending[:PIECE_BYTES]))
                del pending[:PIECE_BYTES]
                index += 1
        if received != size or hasher.hexdigest() != digest:
            if not known:
                await self._drop_pieces(owner, digest)
            what = f"{received} bytes" if received != size else f"content with SHA-256 {hasher.hexdigest()}"
            raise BlobMismatch(f"blob {digest} should be {size} bytes with that SHA-256 but {what} arrived")
        if known:
            return
        if pending or index == 0:
            await self._store_piece(owner, digest, index, bytes(pending))
        async with self._tx() as conn:
            await conn.execute(
                self._put_blob, {"owner_id": owner, "digest": digest, "size": size, "create_time_us": now_us()}
            )

    async def _store_piece(self, owner: str, digest: str, index: int, data: bytes) -> None:
        async with self._tx() as conn:
            await conn.execute(self._put_piece, {"owner_id": owner, "digest": digest, "idx": index, "data": data})

    async def _drop_pieces(self, owner: str, digest: str) -> None:
        async with self._tx() as conn:
            await conn.execute(delete(_pieces).where(and_(_pieces.c.owner_id == owner, _pieces.c.digest == digest)))

    async def read(self, owner: str, digest: str) -> AsyncIterator[bytes]:
        async with self._tx() as conn:
            found = (
                await conn.execute(
                    select(_blobs.c.size).where(and_(_blobs.c.owner_id == owner, _blobs.c.digest == digest))
                )
            ).first()
        if found is None:
            raise KeyError(digest)
        index = 0
        while True:
            # One piece per query: a reader holds at most one piece in memory.
            async with self._tx() as conn:
                row = (
                    await conn.execute(
                        select(_pieces.c.data).where(
                            and_(_pieces.c.owner_id == owner, _pieces.c.digest == digest, _pieces.c.idx == index)
                        )
                    )
                ).first()
            if row is None:
                return
            yield bytes(row.data)
            index += 1

    async def usage(self, owner: str) -> int:
        async with self._tx() as conn:
            total = (await conn.execute(select(func.sum(_blobs.c.size)).where(_blobs.c.owner_id == owner))).scalar()
        return int(total or 0)

    async def delete_owner(self, owner: str) -> int:
        async with self._tx() as conn:
            count = (
                await conn.execute(select(func.count()).select_from(_blobs).where(_blobs.c.owner_id == owner))
            ).scalar()
            await conn.execute(delete(_pieces).where(_pieces.c.owner_id == owner))
            await conn.execute(delete(_blobs).where(_blobs.c.owner_id == owner))
        return int(count or 0)
