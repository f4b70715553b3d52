"""Engine set-up: one async engine per control plane, SQLite tuned for a single writer."""

from __future__ import annotations

import logging
import pathlib

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


class DatabasePathError(ValueError):
    """A SQLite file that cannot be where --db puts it; the message names the folder."""


def database_url(db: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (which means SQLite). A URL that names no
    driver gets the one Tether ships with: asyncpg for PostgreSQL, aiosqlite for SQLite.

    A SQLite file's folder must exist: a new file is made in it, but never a folder, so a
    typo in --db is refused (`DatabasePathError`) instead of starting on an empty database."""
    for bare, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if db.startswith(bare):
            db = driver + db[len(bare) :]
            break
    if "://" not in db:
        db = f"sqlite+aiosqlite:///{pathlib.Path(db).expanduser().resolve()}"
    url = make_url(db)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        _check_folder(pathlib.Path(url.database))
    return db


def _check_folder(path: pathlib.Path) -> None:
    folder = path.parent
    if folder.is_dir():
        return
    if folder.exists():
        raise DatabasePathError(f"{folder} is not a folder, so the database file {path.name} cannot be made in it")
    raise DatabasePathError(
        f"the folder {folder} does not exist, so the database file {path.name} cannot be made in it; "
        f"create the folder first (mkdir -p {folder}) or fix --db"
    )


def _sqlite_pragmas(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        # WAL lets readers (event replay, lists) run while the writer commits; NORMAL in WAL
        # mode loses nothing on a process crash, only on power loss (FULL covers that).
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, sqlite_synchronous: str = "NORMAL", pool_size: int = 5) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=10)
        _sqlite_pragmas(engine.sync_engine, sqlite_synchronous)
        return engine
    # asyncpg waits 60 s for a host that does not answer; a control plane should say so sooner.
    connect_args = {"timeout": 5} if make_url(url).get_driver_name() == "asyncpg" else {}
    return create_async_engine(url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True, connect_args=connect_args)


def create_sqlite_writer_engine(url: str, *, sqlite_synchronous: str = "NORMAL") -> Engine:
    """A synchronous engine on the same SQLite file, for the writer's dedicated thread."""
    sync_url = make_url(url).set(drivername="sqlite+pysqlite")
    engine = create_sync_engine(sync_url, pool_size=1, max_overflow=0)
    _sqlite_pragmas(engine, sqlite_synchronous)
    return engine
