"""`SqlBlobStore.read` reads a page of pieces at a time, each page a read that runs to its end:
a caller that goes away mid-read never cuts a query off (`store/_whole.py`), every blob comes
out whole and in order whatever its size, and a blob that goes between two pages, or was never
stored whole (a piece missing), ends the read with `KeyError` instead of coming out short. An
upload that fails its check leaves a stored blob of the same name as it was."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.unit.control_plane.test_reads_run_to_the_end import terminations
from tether.control_plane.domain.ports import BlobMismatch
from tether.control_plane.store import _blobs
from tether.control_plane.store._blobs import PIECE_BYTES, SqlBlobStore
from tether.control_plane.store._database import database_url
from tether.control_plane.store._migrate import ensure_schema

OWNER = "own_a"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, max(len(data), 1), 300 << 10):
        yield data[start : start + (300 << 10)]


async def _upload(store: SqlBlobStore, *blobs: bytes) -> list[str]:
    async def each() -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
        for data in blobs:
            yield _sha(data), len(data), _chunks(data)

    await store.put(OWNER, each())
    return [_sha(b) for b in blobs]


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    """SQLite and PostgreSQL (`db_url`), with every connection SQLAlchemy terminates counted."""
    engine = create_async_engine(database_url(db_url))
    await ensure_schema(engine, migrate=True)
    try:
        yield engine, terminations(engine)
    finally:
        await engine.dispose()


async def _read(store: SqlBlobStore, digests: list[str]) -> dict[str, bytes]:
    out: dict[str, bytearray] = {}
    async for digest, piece in store.read(OWNER, digests):
        out.setdefault(digest, bytearray()).extend(piece)
    return {d: bytes(b) for d, b in out.items()}


async def test_blobs_of_every_size_come_out_whole_a_page_at_a_time(engine, monkeypatch):
    eng, _ = engine
    store = SqlBlobStore(eng)
    sizes = [0, 1, 5000, PIECE_BYTES, PIECE_BYTES + 1, 4 * PIECE_BYTES, 9 * PIECE_BYTES + 7, 300]
    blobs = [bytes([i + 1]) * n for i, n in enumerate(sizes)]
    digests = await _upload(store, *blobs)
    pages: list[tuple[list[str], range]] = []
    page = SqlBlobStore._page.__wrapped__  # type: ignore[attr-defined]

    async def counted(self, owner, p):
        pages.append((p.digests, p.pieces))
        return await page(self, owner, p)

    monkeypatch.setattr(SqlBlobStore, "_page", counted)
    assert await _read(store, digests) == dict(zip(digests, blobs, strict=True))
    # The 9 MiB blob came in three pages of at most four pieces; the small ones shared pages.
    big = digests[sizes.index(9 * PIECE_BYTES + 7)]
    assert [p for ds, p in pages if ds == [big]] == [range(0, 4), range(4, 8), range(8, 12)]
    assert sum(len(ds) for ds, _ in pages if big not in ds) == len(sizes) - 1
    assert len(pages) < len(sizes) + 2


async def test_a_caller_that_goes_away_mid_read_cuts_no_query_off(engine, monkeypatch):
    eng, terminated = engine
    store = SqlBlobStore(eng)
    [digest] = await _upload(store, b"x" * (12 * PIECE_BYTES))
    started, finished = asyncio.Event(), []
    # The slowed page below runs to its end through the same decorator the store's own does.
    assert hasattr(SqlBlobStore._page, "__wrapped__")
    page = SqlBlobStore._page.__wrapped__  # type: ignore[attr-defined]

    async def slow(self, owner, p):
        started.set()
        await asyncio.sleep(0.2)  # the caller is cancelled while the page is read
        rows = await page(self, owner, p)
        finished.append(p.pieces)
        return rows

    monkeypatch.setattr(SqlBlobStore, "_page", _blobs.runs_to_the_end(slow))
    got: list[bytes] = []

    async def consume() -> None:
        async for _, piece in store.read(OWNER, [digest]):
            got.append(piece)

    caller = asyncio.ensure_future(consume())
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # The page in flight ran to its end and its connection went back whole; nothing after it ran.
    assert finished == [range(0, 4)]
    assert got == []
    assert terminated == []
    assert eng.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_blob_collected_between_two_pages_ends_the_read_with_key_error(engine, monkeypatch):
    eng, _ = engine
    store = SqlBlobStore(eng)
    [digest] = await _upload(store, b"y" * (6 * PIECE_BYTES))
    got: list[bytes] = []
    with pytest.raises(KeyError) as gone:
        async for _, piece in store.read(OWNER, [digest]):
            got.append(piece)
            if len(got) == 4:  # the first page is read: collect the blob before the second
                assert await store.collect(OWNER, set(), used_before_us=2**62) == (1, 6 * PIECE_BYTES)
    assert gone.value.args == (digest,)
    assert len(got) == 4  # never a short blob passed off as whole


async def test_a_missing_piece_ends_the_read_and_pieces_past_a_blobs_size_are_skipped(engine):
    eng, _ = engine
    store = SqlBlobStore(eng)
    short, long = b"s" * (PIECE_BYTES + 10), b"l" * 10
    d_short, d_long = await _upload(store, short, long)
    async with eng.begin() as conn:
        # A blob row claiming a piece more than is stored (a piece lost), and stray pieces past
        # a blob's end (an upload cut off half-way, of a larger size, under the same name).
        await conn.execute(
            update(_blobs._blobs).where(_blobs._blobs.c.digest == d_short).values(size=len(short) + PIECE_BYTES)
        )
        for idx in (1, 7):
            await conn.execute(insert(_blobs._pieces).values(owner_id=OWNER, digest=d_long, idx=idx, data=b"stray"))
    with pytest.raises(KeyError) as gone:
        await _read(store, [d_short])
    assert gone.value.args == (d_short,)
    assert await _read(store, [d_long]) == {d_long: long}
    # A page of small blobs never fetches more than its four pieces a blob, strays or not.
    assert [idx for _, idx, _ in await store._page(OWNER, _blobs._Page([d_long], range(4)))] == [0, 1]
    with pytest.raises(KeyError):
        await _read(store, ["0" * 64])


@pytest.mark.parametrize("size", [10, 3 * PIECE_BYTES + 5], ids=["one piece", "four pieces"])
async def test_an_upload_that_does_not_match_leaves_the_stored_blob_of_that_name_whole(engine, size):
    """Two sessions with the same file may upload it at once; one whose copy changed under it
    fails its SHA-256 check, and must not overwrite or drop the pieces the other stored."""
    eng, _ = engine
    store = SqlBlobStore(eng)
    good = b"g" * size
    [digest] = await _upload(store, good)

    async def forged() -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
        yield digest, size, _chunks(b"b" * size)

    async def longer() -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
        yield digest, size + 2 * PIECE_BYTES, _chunks(b"b" * (size + 2 * PIECE_BYTES))

    for upload in (forged, longer):
        with pytest.raises(BlobMismatch):
            await store.put(OWNER, upload())
        assert await _read(store, [digest]) == {digest: good}
        assert await store.missing(OWNER, [digest]) == []
    async with eng.connect() as conn:  # and what the longer one wrote past the blob's end is gone
        rows = await conn.execute(select(_blobs._pieces.c.idx).where(_blobs._pieces.c.digest == digest))
        assert sorted(r.idx for r in rows) == list(range(_blobs._piece_count(size)))
