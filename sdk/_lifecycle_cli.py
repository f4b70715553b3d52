"""The session lifecycle commands of `tether session`: fork, revert, export and import (a
bundle, or a thread run with the plain Codex CLI), archive and unarchive, delete now or later,
and purging an owner. `_session_cli` defines the group and imports this module to add them."""

from __future__ import annotations

import os
import pathlib
import sys
from typing import BinaryIO

import click

from . import codex_import
from ._cli_common import LazyClient, echo_json, json_option, pass_lazy
from ._session_cli import session

__all__: list[str] = []


@session.command()
@click.argument("session_id")
@click.option("--turn", "turn_id", default="", help="Last turn to copy (default: the last completed turn).")
@json_option
@pass_lazy
def fork(lazy: LazyClient, session_id: str, turn_id: str, as_json: bool) -> None:
    """Copy a session up to a turn into a new session; the original stays as it is."""
    forked = lazy.client.fork_session(session_id, turn_id or None)
    if as_json:
        echo_json(forked)
    else:
        click.echo(f"{forked.session_id} forked from {forked.forked_from_session_id} at {forked.forked_from_turn_id}")


@session.command()
@click.argument("session_id")
@click.argument("turn_id")
@json_option
@pass_lazy
def revert(lazy: LazyClient, session_id: str, turn_id: str, as_json: bool) -> None:
    """Move a session's head back to the end of TURN_ID (later turns leave the history)."""
    session = lazy.client.revert_session(session_id, turn_id)
    if as_json:
        echo_json(session)
    else:
        click.echo(f"{session.session_id} reverted to {turn_id}")


@session.command()
@click.argument("session_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write here (default: stdout).",
)
@pass_lazy
def export(lazy: LazyClient, session_id: str, output: str) -> None:
    """Write a session (no turn queued or running) as a bundle: its turns, events, requests,
    snapshots and workspace checkpoints with their files, JSON Lines (docs/bundles.md)."""
    chunks = lazy.client.export_session(session_id)
    if output == "-":
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return
    # Written beside the target and renamed once whole: a failed export leaves no partial file.
    partial = f"{output}.partial"
    with open(partial, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    os.replace(partial, output)


@session.command("import")
@click.argument("bundle", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--keep-id", is_flag=True, help="Keep the bundle's session, turn and request ids (default: new ones).")
@json_option
@pass_lazy
def import_(lazy: LazyClient, bundle: str, keep_id: bool, as_json: bool) -> None:
    """Create a session from a bundle file (- for stdin) and print its id."""
    try:
        source: BinaryIO = sys.stdin.buffer if bundle == "-" else open(bundle, "rb")
    except OSError as exc:
        raise click.FileError(bundle, exc.strerror) from None
    with source:
        imported = lazy.client.import_session(iter(lambda: source.read(1 << 20), b""), keep_session_id=keep_id)
    if as_json:
        echo_json(imported)
    else:
        click.echo(imported.session_id)


@session.command("import-codex")
@click.argument("rollout", required=False, type=click.Path(dir_okay=False))
@click.option("--thread-id", default="", help="Find the thread's rollout under the Codex home instead.")
@click.option(
    "--codex-home",
    type=click.Path(file_okay=False),
    default=None,
    help="Where Codex keeps its threads (default: $CODEX_HOME, else ~/.codex).",
)
@json_option
@pass_lazy
def import_codex(lazy: LazyClient, rollout: str | None, thread_id: str, codex_home: str | None, as_json: bool) -> None:
    """Import a thread that ran with the plain Codex CLI (its rollout file, or its id) as a
    session whose next turn runs on any Codex worker; print the session's id."""
    if bool(rollout) == bool(thread_id):
        raise click.UsageError("name the thread: a ROLLOUT file or --thread-id (one of them)")
    try:
        path = (
            pathlib.Path(rollout)
            if rollout
            else codex_import.find_rollout(
                pathlib.Path(codex_home) if codex_home else codex_import.default_codex_home(), thread_id
            )
        )
        bundle = codex_import.bundle_from_rollout(path)
    except codex_import.RolloutError as exc:
        raise click.ClickException(f"{rollout or thread_id}: {exc}") from None
    except OSError as exc:
        raise click.FileError(str(rollout), exc.strerror) from None
    imported = lazy.client.import_session(bundle)
    if as_json:
        echo_json(imported)
    else:
        click.echo(imported.session_id)


@session.command()
@click.argument("session_id")
@json_option
@pass_lazy
def archive(lazy: LazyClient, session_id: str, as_json: bool) -> None:
    """Archive a session (read-only from then on)."""
    archived = lazy.client.archive_session(session_id)
    if as_json:
        echo_json(archived)
    else:
        click.echo(f"{archived.session_id} {archived.state.name.lower()}")


@session.command()
@click.argument("session_id")
@json_option
@pass_lazy
def unarchive(lazy: LazyClient, session_id: str, as_json: bool) -> None:
    """Make an archived session writable again."""
    session = lazy.client.unarchive_session(session_id)
    if as_json:
        echo_json(session)
    else:
        click.echo(f"{session.session_id} {session.state.name.lower()}")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(text: str) -> float:
    """'90', '90s', '15m', '12h' or '7d' in seconds."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "s")
    try:
        return float(number) * _UNITS[unit]
    except ValueError:
        raise click.BadParameter(
            f"expected a duration such as 90s, 15m, 12h or 7d, got {text!r}", param_hint="--after"
        ) from None


@session.command()
@click.argument("session_id")
@click.option("--after", default=None, metavar="DURATION", help="Delete later instead of now: 90s, 15m, 12h, 7d.")
@json_option
@pass_lazy
def delete(lazy: LazyClient, session_id: str, after: str | None, as_json: bool) -> None:
    """Delete a session with its turns, events and snapshots, now or later (--after)."""
    scheduled = lazy.client.delete_session(session_id, delete_after_s=None if after is None else _duration_s(after))
    if as_json:
        echo_json(scheduled)
    elif scheduled is not None and scheduled.delete_time is not None:
        click.echo(f"{session_id} will be deleted at {scheduled.delete_time.isoformat(timespec='seconds')}")
    else:
        click.echo(f"{session_id} deleted")


@session.command("cancel-deletion")
@click.argument("session_id")
@json_option
@pass_lazy
def cancel_deletion(lazy: LazyClient, session_id: str, as_json: bool) -> None:
    """Stop a session's scheduled deletion."""
    kept = lazy.client.cancel_session_deletion(session_id)
    if as_json:
        echo_json(kept)
    else:
        click.echo(f"{session_id} kept")


@session.command("purge-owner")
@click.argument("owner", required=False, default="")
@click.option(
    "--yes", is_flag=True, help="Confirm: this deletes every session, worker token and pairing code of the owner."
)
@json_option
@pass_lazy
def purge_owner(lazy: LazyClient, owner: str, yes: bool, as_json: bool) -> None:
    """Delete everything of one owner (an owner key: its own, OWNER left out; an admin key:
    OWNER), printing progress; run it again to finish one cut short."""
    if not yes:
        raise click.UsageError("purging cannot be undone: pass --yes")
    last = None
    for last in lazy.client.purge_owner_data(owner):
        if not last.done and not as_json:
            click.echo(f"{last.sessions_deleted} sessions deleted", err=True)
    if last is None:
        raise click.ClickException("the control plane ended the purge without saying it was done; run it again")
    if as_json:
        echo_json(last)
    else:
        click.echo(
            f"purged: {last.sessions_deleted} sessions, {last.worker_tokens_deleted} worker tokens, "
            f"{last.workers_deleted} workers, {last.pairing_codes_deleted} pairing codes"
        )
