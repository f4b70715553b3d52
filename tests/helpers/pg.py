"""PostgreSQL for tests: a fresh database per test, or a visible skip when none is reachable.

`TETHER_TEST_PG` names the server (default: the local trust-auth one on 127.0.0.1:5432);
every database made here is dropped afterwards, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

PG_SERVER = os.environ.get("TETHER_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")
_ADMIN_DB = "postgres"
_reachable: str | None = None  # "" when reachable, else why not


async def _admin(sql: str) -> None:
    import asyncpg

    from tether.control_plane.store._election import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(f"{PG_SERVER}/{_ADMIN_DB}"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _run(coro) -> None:
    """Run admin SQL from sync or async tests alike (on its own thread's loop)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


def pg_unreachable_reason() -> str:
    """Empty when PostgreSQL answers at PG_SERVER; otherwise why it does not (cached)."""
    global _reachable
    if _reachable is None:
        try:
            _run(_admin("SELECT 1"))
            _reachable = ""
        except Exception as exc:
            _reachable = f"no PostgreSQL reachable at {PG_SERVER} ({type(exc).__name__}: {exc})"
    return _reachable


def require_pg() -> None:
    why = pg_unreachable_reason()
    if why:
        pytest.skip(why)


@contextlib.contextmanager
def fresh_database(prefix: str = "tether_t") -> Iterator[str]:
    """A new empty database; yields its SQLAlchemy URL and drops it afterwards."""
    require_pg()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
