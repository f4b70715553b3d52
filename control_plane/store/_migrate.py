"""Schema revisions: the tables are made and changed only by the Alembic migrations in
`migrations/`, run here on the control plane's own async engine (aiosqlite or asyncpg).

Each upgrade is one transaction: a failed migration leaves the database as it was. A database
made before migrations existed (by `create_all`, so without `alembic_version`) is recognised by
its tables, recorded ("stamped") as the revision they match, and upgraded from there.

Errors, each one line that says what to do:

    DatabaseNotReady          the database cannot be used as it is
    ├── DatabaseUnreachable   no connection (nothing listening, no such database, refused login)
    ├── UpgradeFailed         a migration failed; its transaction was rolled back
    └── SchemaNotCurrent      its tables are not at this release's revision (`upgradable` when
                              `tether db upgrade` would fix that)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pathlib
import shlex
import weakref
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._schema import Base

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = pathlib.Path(__file__).with_name("migrations")
# Taken by every upgrade on PostgreSQL, so two control planes started with --migrate at once
# upgrade one after the other (the second finds the work done). SQLite's BEGIN IMMEDIATE does
# the same there.
_PG_LOCK = zlib.crc32(b"tether schema migrations")
_VERSION_TABLE = "alembic_version"


def _config(connection: Connection | None = None, **attributes: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes.update(connection=connection, **attributes)
    return config


_SCRIPTS = ScriptDirectory.from_config(_config())


def _head() -> str:
    head = _SCRIPTS.get_current_head()
    if head is None:
        raise RuntimeError(f"no migration in {MIGRATIONS}: the installation is broken")
    return head


SCHEMA_HEAD: str = _head()  # the revision this release needs
_KNOWN = {script.revision for script in _SCRIPTS.walk_revisions()}
_TETHER_TABLES = frozenset(Base.metadata.tables)


class DatabaseNotReady(Exception):
    """The database cannot be used as it is; the message says why and what to do."""


class DatabaseUnreachable(DatabaseNotReady):
    """No connection could be made."""


class UpgradeFailed(DatabaseNotReady):
    """A migration failed; its transaction was rolled back."""


class SchemaNotCurrent(DatabaseNotReady):
    """The tables are not at `SCHEMA_HEAD`. `upgradable`: `tether db upgrade` would bring them there."""

    def __init__(self, message: str, *, upgradable: bool) -> None:
        super().__init__(message)
        self.upgradable = upgradable


@dataclass(frozen=True)
class SchemaState:
    """What a database holds. `revision` is the one recorded in `alembic_version` (`recorded`)
    or, for a database made before migrations, the one its tables match; None when it has no
    Tether tables. `tables` are all its tables, Tether's or not."""

    revision: str | None
    recorded: bool
    tables: frozenset[str]

    @property
    def at_head(self) -> bool:
        return self.recorded and self.revision == SCHEMA_HEAD


@dataclass(frozen=True)
class Upgrade:
    """What `upgrade_schema` did. `from_revision` is None for a database without Tether tables;
    `stamped` when it was made before migrations and its revision was recorded first.
    `legacy_owner_rows` ({"sessions": n, "workers": m}) when revision 0002 gave the rows that
    existed before owners to `legacy_owner`."""

    from_revision: str | None
    to_revision: str
    stamped: bool
    legacy_owner: str
    legacy_owner_rows: dict[str, int] | None

    @property
    def changed(self) -> bool:
        return self.stamped or self.from_revision != self.to_revision


def describe_database(db: str | URL) -> str:
    """How to name a database to a person: a SQLite file's path, or the URL with any password
    masked."""
    if isinstance(db, str) and "://" not in db:
        return db  # a plain path: a SQLite file
    try:
        url = make_url(db)
    except Exception:
        return "given by --db (not a valid database URL)"
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _upgrade_command(url: URL) -> str:
    return f"`tether db upgrade --db {shlex.quote(describe_database(url))}`"


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, TimeoutError):
        return "timed out waiting for an answer"
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


@contextlib.asynccontextmanager
async def _connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    try:
        conn = await engine.connect()
    except Exception as exc:
        raise DatabaseUnreachable(f"cannot open the database {describe_database(engine.url)}: {_reason(exc)}") from exc
    try:
        yield conn
    finally:
        await conn.close()


def not_current(url: URL, state: SchemaState) -> SchemaNotCurrent:
    """The refusal for a database in `state` that is not at head, naming what to run."""
    name = describe_database(url)
    if state.revision is not None and state.revision not in _KNOWN:
        return SchemaNotCurrent(
            f"the database {name} is at revision {state.revision}, newer than this release knows "
            f"(it needs {SCHEMA_HEAD}): run the Tether release that upgraded it",
            upgradable=False,
        )
    if state.revision is None:
        problem = f"the database {name} has no Tether tables yet, this release needs revision {SCHEMA_HEAD}"
    elif not state.recorded:
        problem = (
            f"the database {name} was made before migrations (its tables are revision {state.revision}), "
            f"this release needs {SCHEMA_HEAD}"
        )
    else:
        problem = f"the database {name} is at revision {state.revision}, this release needs {SCHEMA_HEAD}"
    return SchemaNotCurrent(f"{problem}: run {_upgrade_command(url)}", upgradable=True)


# Reading the state (sync, on the connection run_sync hands over).


@functools.cache
def _columns_at(revision: str) -> dict[str, frozenset[str]]:
    """The tables and columns of `revision`, from running the migrations on an in-memory SQLite."""
    engine = create_sync_engine("sqlite://")
    quiet = logging.getLogger("alembic")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # this rehearsal is no upgrade of the user's database
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn, legacy_owner="-"), revision)
            inspector = inspect(conn)
            return {
                table: frozenset(c["name"] for c in inspector.get_columns(table))
                for table in inspector.get_table_names()
                if table != _VERSION_TABLE
            }
    finally:
        quiet.setLevel(level)
        engine.dispose()


def _differences(have: dict[str, set[str]], want: dict[str, frozenset[str]]) -> list[str]:
    found = []
    for table in sorted(want.keys() | have.keys()):
        if table not in have:
            found.append(f"lacks table {table}")
        elif table not in want:
            found.append(f"has table {table}")
        else:
            found += [f"lacks {table}.{column}" for column in sorted(want[table] - have[table])]
            found += [f"has {table}.{column}" for column in sorted(have[table] - want[table])]
    return found


def _made_before_migrations(conn: Connection, url: URL, tables: frozenset[str]) -> str:
    """The revision whose tables and columns a database without `alembic_version` holds exactly
    (databases made by `create_all`: 0001 before owners, 0002 with them)."""
    inspector = inspect(conn)
    have = {table: {c["name"] for c in inspector.get_columns(table)} for table in tables & _TETHER_TABLES}
    nearest: tuple[str, list[str]] | None = None
    for script in _SCRIPTS.walk_revisions():
        differences = _differences(have, _columns_at(script.revision))
        if not differences:
            return script.revision
        if nearest is None or len(differences) < len(nearest[1]):
            nearest = (script.revision, differences)
    assert nearest is not None
    revision, differences = nearest
    raise SchemaNotCurrent(
        f"the database {describe_database(url)} has Tether tables but no migration record, and they match no "
        f"release (the nearest is revision {revision}; it {', '.join(differences)}): "
        "point --db at a Tether database, or at a new one",
        upgradable=False,
    )


def _recorded(conn: Connection, url: URL, tables: frozenset[str]) -> str | None:
    # Read directly rather than through a MigrationContext, which logs as if migrating.
    if _VERSION_TABLE not in tables:
        return None
    revisions = [row[0] for row in conn.exec_driver_sql(f"SELECT version_num FROM {_VERSION_TABLE}")]
    if len(revisions) > 1:
        raise SchemaNotCurrent(
            f"the database {describe_database(url)} records several revisions at once ({', '.join(revisions)}): "
            "Tether's migrations have one line, so something else changed it",
            upgradable=False,
        )
    return revisions[0] if revisions else None


def _state(conn: Connection, url: URL) -> SchemaState:
    tables = frozenset(inspect(conn).get_table_names())
    recorded = _recorded(conn, url, tables)
    if recorded is not None:
        return SchemaState(recorded, True, tables)
    if not tables & _TETHER_TABLES:
        return SchemaState(None, False, tables)
    return SchemaState(_made_before_migrations(conn, url, tables), False, tables)


def _upgrade(conn: Connection, url: URL, legacy_owner: str) -> Upgrade:
    state = _state(conn, url)  # read under the lock: a concurrent upgrade has finished
    if state.revision is not None and state.revision not in _KNOWN:
        raise not_current(url, state)
    config = _config(conn, legacy_owner=legacy_owner)
    stamped = state.revision is not None and not state.recorded
    if state.revision is not None and stamped:
        command.stamp(config, state.revision)
    if state.revision != SCHEMA_HEAD:
        command.upgrade(config, SCHEMA_HEAD)
    return Upgrade(
        from_revision=state.revision,
        to_revision=SCHEMA_HEAD,
        stamped=stamped,
        legacy_owner=legacy_owner,
        legacy_owner_rows=config.attributes.get("legacy_owner_rows"),
    )


# Alembic keeps the running migration in module globals (`alembic.op`, `alembic.context`), and
# run_sync gives the loop back at every statement: two migrations interleaved on one loop would
# run each other's operations. One at a time per loop, then.
_one_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def _migration_transaction(engine: AsyncEngine, migrate: Callable[..., T], *args: object) -> T:
    """Run `migrate(sync_connection, *args)` in one transaction that holds the migration lock
    (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE, with foreign keys off)."""
    lock = _one_per_loop.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, _connect(engine) as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Re-creating a table (batch mode) must not cascade to its children; the pragma only
            # takes effect outside a transaction.
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.commit()
        try:
            async with conn.begin():
                if sqlite:
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif conn.dialect.name == "postgresql":
                    await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")
                result = await conn.run_sync(migrate, *args)
                if sqlite:
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()
                    if broken:
                        raise RuntimeError(f"the migration would break foreign keys: {broken[:5]}")
                return result
        finally:
            if sqlite:
                try:
                    await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    await conn.commit()
                except Exception:
                    await conn.invalidate()


# The async API.


async def schema_state(engine: AsyncEngine) -> SchemaState:
    async with _connect(engine) as conn:
        return await conn.run_sync(_state, engine.url)


async def check_schema(engine: AsyncEngine) -> None:
    """Return if the database is at `SCHEMA_HEAD`; otherwise raise `SchemaNotCurrent`."""
    state = await schema_state(engine)
    if not state.at_head:
        raise not_current(engine.url, state)


async def upgrade_schema(engine: AsyncEngine, legacy_owner: str = "local") -> Upgrade:
    """Bring the database to `SCHEMA_HEAD` in one transaction (a no-op there). Sessions and
    workers from before owners get `legacy_owner`."""
    try:
        return await _migration_transaction(engine, _upgrade, engine.url, legacy_owner)
    except DatabaseNotReady:
        raise
    except Exception as exc:
        log.debug("upgrade failed", exc_info=True)
        raise UpgradeFailed(
            f"upgrading the database {describe_database(engine.url)} to revision {SCHEMA_HEAD} failed "
            f"and changed nothing: {_reason(exc)}"
        ) from exc


async def ensure_schema(engine: AsyncEngine, *, migrate: bool = False, legacy_owner: str = "local") -> Upgrade | None:
    """What a process that opens the database does first. At head: nothing. A brand-new SQLite
    file (no tables at all) or `migrate`: upgrade it. Anything else: `SchemaNotCurrent`."""
    state = await schema_state(engine)
    if state.at_head:
        return None
    if not (migrate or (engine.url.get_backend_name() == "sqlite" and not state.tables)):
        raise not_current(engine.url, state)
    done = await upgrade_schema(engine, legacy_owner)
    if done.changed:
        log.info(
            "database %s upgraded from %s to %s",
            describe_database(engine.url),
            done.from_revision or "empty",
            done.to_revision,
        )
    if done.from_revision is not None and done.legacy_owner_rows and any(done.legacy_owner_rows.values()):
        log.warning(
            "sessions and workers from before owners (%s) now belong to owner %r",
            ", ".join(f"{table}: {n}" for table, n in done.legacy_owner_rows.items()),
            legacy_owner,
        )
    return done
