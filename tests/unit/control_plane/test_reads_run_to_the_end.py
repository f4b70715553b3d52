"""A read whose caller is cancelled runs to its end, so SQLAlchemy never terminates its
connection mid-query (with aiosqlite, a termination cancelled again could leave the event loop
unable to finish at shutdown). `store/_whole.py`."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tether.control_plane.store._access import AccessStore
from tether.control_plane.store._blobs import SqlBlobStore
from tether.control_plane.store._reads import Reader
from tether.control_plane.store._whole import to_the_end

# About a second of SQLite work, long enough to be cancelled in the middle.
SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c"


def terminations(engine: AsyncEngine) -> list[str]:
    """A list that gets "terminated" each time SQLAlchemy terminates one of `engine`'s
    connections (what a query cut off by a cancellation leads to)."""
    terminated: list[str] = []
    dialect = engine.dialect
    original = dialect.do_terminate

    def do_terminate(dbapi_connection: object) -> None:
        terminated.append("terminated")
        original(dbapi_connection)

    dialect.do_terminate = do_terminate  # type: ignore[method-assign]
    return terminated


@pytest.fixture
async def engine(tmp_path: pathlib.Path) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'reads.db'}")
    try:
        yield engine, terminations(engine)
    finally:
        await engine.dispose()


async def _slow(engine: AsyncEngine, done: list[int]) -> int:
    async with engine.connect() as conn:
        count = int((await conn.execute(text(SLOW))).scalar_one())
    done.append(count)
    return count


@pytest.mark.parametrize("whole", [True, False], ids=["to the end", "cut off"])
async def test_a_cancelled_caller_lets_its_read_finish_and_the_connection_stays_whole(engine, whole):
    eng, terminated = engine
    done: list[int] = []
    read = _slow(eng, done)
    caller = asyncio.ensure_future(to_the_end(read) if whole else read)
    await asyncio.sleep(0.1)  # the query is running on aiosqlite's thread
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    if whole:
        # The caller was cancelled only once the read had ended, and the connection went back
        # to the pool as any other: nothing was terminated.
        assert done == [3_000_000]
        assert terminated == []
        assert eng.pool.checkedout() == 0  # type: ignore[attr-defined]
    else:
        # What the wrapper prevents: the cut-off query's connection is terminated.
        assert done == []
        assert terminated == ["terminated"]


async def test_every_read_of_the_reader_runs_to_the_end(engine, monkeypatch):
    eng, _ = engine
    reads = [n for n, v in vars(Reader).items() if not n.startswith("_") and asyncio.iscoroutinefunction(v)]
    assert {"load_session", "latest_snapshot", "events_after", "current_checkpoint"} <= set(reads)
    for name in reads:
        assert hasattr(getattr(Reader, name), "__wrapped__"), f"Reader.{name} is not wrapped"
    seen: list[str] = []

    async def recording(read):
        seen.append(read.__qualname__)
        return await to_the_end(read)

    monkeypatch.setattr("tether.control_plane.store._whole.to_the_end", recording)
    with pytest.raises(Exception, match="no such table"):  # an empty database: the call is what counts
        await Reader(eng).latest_snapshot("ses_x")
    assert seen == ["Reader.latest_snapshot"]


def test_the_credential_and_blob_stores_reads_run_to_the_end():
    for cls, reads in (
        (AccessStore, ["find_api_key", "list_api_keys", "find_worker_token", "worker_id_bound", "list_worker_tokens"]),
        (SqlBlobStore, ["missing", "usage", "owners", "_sizes", "_page"]),  # `read` is pages of `_page`
    ):
        for name in reads:
            assert hasattr(getattr(cls, name), "__wrapped__"), f"{cls.__name__}.{name} is not wrapped"
    # Writes a caller gave up on are not made behind its back.
    assert not hasattr(AccessStore.pair, "__wrapped__")
    assert not hasattr(AccessStore.create_api_key, "__wrapped__")
