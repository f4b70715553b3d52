"""A worker's credentials at the command line: the token kept in its token file, or one got
with a pairing code and kept there (`tether worker --pairing-code`, `tether worker pair`)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TypedDict

import click
import grpc

from tether.execution_worker._credentials import (
    WorkerCredentials,
    default_token_file,
    load_credentials,
    pair,
    save_credentials,
)
from tether.execution_worker._errors import describe
from tether.execution_worker._settings import DEFAULT_CONTROL_PLANE


class TlsFiles(TypedDict):
    """The TLS files of the --tls-* flags, as `WorkerSettings` and `pair()` name them."""

    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None


def credentials_for(
    token_file: Path, pairing_code: str | None, control_plane: str, name: str, tls: TlsFiles
) -> WorkerCredentials | None:
    try:
        stored = load_credentials(token_file)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if stored is not None:
        if pairing_code:
            logging.getLogger("tether.execution_worker").info(
                "already paired (%s); ignoring the pairing code", token_file
            )
        return stored
    if not pairing_code:
        return None
    return pair_and_save(control_plane, pairing_code, name, token_file, tls)


def pair_and_save(control_plane: str, code: str, name: str, token_file: Path, tls: TlsFiles) -> WorkerCredentials:
    try:
        credentials = asyncio.run(pair(control_plane, code, name, **tls))
    except ValueError as error:  # an unreadable TLS file
        raise click.UsageError(str(error)) from None
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"pairing with {control_plane} failed: {describe(error)}") from None
    save_credentials(token_file, credentials)
    return credentials


@click.command("pair")
@click.option(
    "--code",
    envvar="TETHER_PAIRING_CODE",
    show_envvar=True,
    required=True,
    help="The one-time pairing code (tether pair).",
)
@click.option("--control-plane", default=None, help="HOST:PORT of the control plane [default: the group's].")
@click.option(
    "--token-file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    show_default="the group's --token-file, else WORKDIR/.tether/token.json",
    help="Where to keep the token (readable by this user only).",
)
@click.option("--name", default=None, help="Name for the token [default: the group's --name].")
@click.pass_context
def pair_worker(
    ctx: click.Context, code: str, control_plane: str | None, token_file: Path | None, name: str | None
) -> None:
    """Exchange a one-time pairing code for this worker's token and keep it."""
    group = ctx.parent.params if ctx.parent is not None else {}
    target = control_plane or group.get("control_plane") or DEFAULT_CONTROL_PLANE
    path = token_file or group.get("token_file") or default_token_file(group.get("workdir") or Path("./tether-worker"))
    tls = TlsFiles(
        tls_ca_file=group.get("tls_ca"), tls_cert_file=group.get("tls_cert"), tls_key_file=group.get("tls_key")
    )
    credentials = pair_and_save(target, code, name or group.get("name") or socket.gethostname(), path, tls)
    click.echo(f"paired: worker {credentials.worker_id} of owner {credentials.owner!r}; token kept in {path}")
