"""`tether db`: the control plane database's schema revision: upgrade it, show it, check it.

`tether serve` sets up a new SQLite file by itself and refuses any other database that is not
at this release's revision; these commands are how an operator brings one there (or
`tether serve --migrate` at start).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from .api._auth import owner_name
from .domain import errors
from .store import (
    SCHEMA_HEAD,
    DatabaseNotReady,
    SchemaState,
    Upgrade,
    check_schema,
    create_engine,
    database_url,
    describe_database,
    not_current,
    schema_state,
    upgrade_schema,
)

T = TypeVar("T")

_db_option = click.option(
    "--db",
    default="tether.db",
    show_default=True,
    envvar="TETHER_DB",
    show_envvar=True,
    help="The control plane's SQLite file path or SQLAlchemy URL.",
)


def _run(db: str, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        try:
            engine = create_engine(database_url(db))
        except Exception as exc:
            raise click.ClickException(f"cannot open the database {describe_database(db)}: {exc}") from None
        try:
            return await action(engine)
        except DatabaseNotReady as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            await engine.dispose()

    return asyncio.run(run())


@click.group()
def db() -> None:
    """Upgrade, show and check the revision of the control plane's database."""


@db.command()
@_db_option
@click.option(
    "--legacy-owner",
    default="local",
    show_default=True,
    envvar="TETHER_LEGACY_OWNER",
    show_envvar=True,
    help="The owner that sessions and workers from before owners (revision 0001) are given. "
    "'local' is the owner `tether serve --dev` acts as.",
)
def upgrade(db: str, legacy_owner: str) -> None:
    """Upgrade the database to this release's revision, in one transaction.

    A database made before migrations is recognised by its tables and recorded as the revision
    it matches first. At the current revision already, nothing changes."""
    try:
        owner_name(legacy_owner, "--legacy-owner")
    except errors.InvalidArgument as exc:
        raise click.BadParameter(exc.violations[0].description, param_hint="--legacy-owner") from None

    done: Upgrade = _run(db, lambda engine: upgrade_schema(engine, legacy_owner))
    name = describe_database(database_url(db))
    if not done.changed:
        click.echo(f"the database {name} is already at revision {done.to_revision} (head): nothing to do")
        return
    if done.stamped:
        click.echo(f"the database {name} was made before migrations: recorded it as revision {done.from_revision}")
    if done.from_revision != done.to_revision:
        click.echo(f"upgraded the database {name} from {done.from_revision or 'empty'} to {done.to_revision}")
    if done.from_revision is not None and done.legacy_owner_rows is not None:
        counts = " and ".join(f"{n} {table if n != 1 else table[:-1]}" for table, n in done.legacy_owner_rows.items())
        click.echo(
            f"sessions and workers from before owners ({counts}) now belong to owner {legacy_owner!r} (--legacy-owner)"
        )


def _revision(state: SchemaState) -> str:
    if state.revision is None:
        return "none (an empty database)" if not state.tables else "none (no Tether tables)"
    if not state.recorded:
        return f"{state.revision} (made before migrations: detected from its tables, not recorded yet)"
    return f"{state.revision} (head)" if state.at_head else state.revision


@db.command()
@_db_option
def current(db: str) -> None:
    """Print the database's revision and, unless it is this release's (the head), what to run."""

    async def action(engine: AsyncEngine) -> list[str]:
        state = await schema_state(engine)
        return [_revision(state)] if state.at_head else [_revision(state), str(not_current(engine.url, state))]

    for line in _run(db, action):
        click.echo(line)


@db.command()
@_db_option
def check(db: str) -> None:
    """Exit 0 when the database is at this release's revision; otherwise say what to run, exit 1."""
    _run(db, check_schema)
    click.echo(f"the database {describe_database(database_url(db))} is at revision {SCHEMA_HEAD} (head)")
