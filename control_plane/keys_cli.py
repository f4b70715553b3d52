"""`tether keys`: issue, list and revoke API keys, straight on the control plane's database.

An operator runs these where the database is reachable (the first key cannot come from an API
that needs a key). A running control plane sees a new key at once and a revoked one within a
few seconds (its credential cache).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import click

from .api._auth import owner_name
from .domain import errors
from .domain.access import KEY_KINDS, ApiKey
from .store import AccessStore, DatabaseNotReady, create_engine, database_url, describe_database, ensure_schema

_db_option = click.option(
    "--db",
    default="tether.db",
    show_default=True,
    envvar="TETHER_DB",
    show_envvar=True,
    help="The control plane's SQLite file path or SQLAlchemy URL.",
)


async def _with_store(db: str, action):
    try:
        engine = create_engine(database_url(db))
    except Exception as exc:
        raise click.ClickException(f"cannot open the database {describe_database(db)}: {exc}") from None
    try:
        # Like `tether serve`: a new SQLite file is set up, any other database must be at head.
        await ensure_schema(engine)
        return await action(AccessStore(engine))
    except DatabaseNotReady as exc:
        raise click.ClickException(str(exc)) from None
    except errors.DomainError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        await engine.dispose()


def _run(db: str, action):
    return asyncio.run(_with_store(db, action))


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds") if us else "-"


@click.group()
def keys() -> None:
    """Issue, list and revoke the API keys applications call Tether with."""


@keys.command()
@click.option(
    "--kind",
    type=click.Choice(KEY_KINDS),
    default="owner",
    show_default=True,
    help="owner: bound to --owner. backend: a trusted application backend that names the owner "
    "in x-tether-owner on each call. admin: like backend, and also sees every owner's workers.",
)
@click.option("--owner", default="", help="The owner an 'owner' key is bound to.")
@click.option("--name", default="", help="A note saying who holds the key.")
@_db_option
def create(kind: str, owner: str, name: str, db: str) -> None:
    """Issue a key and print it. It is shown this once: only its hash is stored."""
    if kind == "owner":
        try:
            owner_name(owner, "--owner")
        except errors.InvalidArgument as exc:
            raise click.BadParameter(
                exc.violations[0].description + " for an owner key", param_hint="--owner"
            ) from None
    elif owner:
        raise click.BadParameter(
            f"a {kind} key is not bound to an owner; it names one on each call", param_hint="--owner"
        )

    async def action(store: AccessStore) -> tuple[ApiKey, str]:
        return await store.create_api_key(kind, owner, name)

    key, secret = _run(db, action)
    click.echo(secret)
    scope = f"owner {key.owner!r}" if key.kind == "owner" else f"{key.kind} key: names the owner in x-tether-owner"
    click.echo(f"# {key.key_id} ({scope}); shown once, keep it secret", err=True)


@keys.command("list")
@_db_option
def list_keys(db: str) -> None:
    """List keys, newest first (never their secrets)."""

    async def action(store: AccessStore) -> list[ApiKey]:
        return await store.list_api_keys()

    for key in _run(db, action):
        state = f"revoked {_when(key.revoke_time_us)}" if key.revoke_time_us else "valid"
        click.echo(f"{key.key_id}  {key.kind:7}  {key.owner or '-':20}  {state:28}  {key.name}")


@keys.command()
@click.argument("key_id")
@_db_option
def revoke(key_id: str, db: str) -> None:
    """Revoke a key: calls with it fail with UNAUTHENTICATED (TOKEN_REVOKED)."""

    async def action(store: AccessStore) -> ApiKey | None:
        return await store.revoke_api_key(key_id)

    key = _run(db, action)
    if key is None:
        raise click.ClickException(f"no API key {key_id!r}")
    click.echo(f"{key.key_id} revoked")
