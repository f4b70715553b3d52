"""The operator commands over `tether.v1.AdminService`: `tether worker list`, `drain`, `tokens`
and `revoke` (added to the `tether worker` group by `tether.cli`), and `tether pair`.
"""

from __future__ import annotations

import os

import click

from ._async_client import DEFAULT_TARGET, DEFAULT_TIMEOUT_S
from ._cli_common import ReportingCommand, echo_json, json_option, make_client
from ._models import WorkerStatus

__all__ = ["drain_worker", "list_worker_tokens", "list_workers", "pair", "revoke_worker_token"]


# No envvar here: the `tether worker` group's own --control-plane reads TETHER_CONTROL_PLANE,
# and an environment variable must not override a flag given before the subcommand.
_admin_control_plane = click.option(
    "--control-plane",
    default=None,
    help=f"Address of the control plane [default: the group's --control-plane, else "
    f"TETHER_CONTROL_PLANE, else {DEFAULT_TARGET}].",
)
_admin_timeout = click.option(
    "--timeout-s",
    type=float,
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Deadline of the call, in seconds.",
)


def _admin_target(ctx: click.Context, control_plane: str | None) -> str:
    if control_plane:
        return control_plane
    parent = ctx.parent.params.get("control_plane") if ctx.parent is not None else None
    return parent or os.environ.get("TETHER_CONTROL_PLANE") or DEFAULT_TARGET


def _worker_line(w: WorkerStatus) -> str:
    state = ("connected" if w.connected else "disconnected") + (",draining" if w.draining else "")
    return (
        f"{w.worker_id}  {state:22}  turns={w.running_turns}/{w.slots}  "
        f"sessions={w.held_sessions}  runtimes={_runtimes(w) or '-'}  {w.name}"
    )


def _runtimes(w: WorkerStatus) -> str:
    """The runtimes, each with its portability when it is not the default: `shell,acp(none)`."""
    return ",".join(
        name + (f"({p})" if (p := w.runtime_portability.get(name, "history")) != "history" else "")
        for name in w.runtimes
    )


@click.command("list", cls=ReportingCommand)
@_admin_control_plane
@_admin_timeout
@json_option
@click.pass_context
def list_workers(ctx: click.Context, control_plane: str | None, timeout_s: float, as_json: bool) -> None:
    """List the workers the control plane knows, connected first."""
    with make_client(_admin_target(ctx, control_plane), timeout_s) as client:
        workers = client.list_workers()
    if as_json:
        echo_json({"workers": workers})
        return
    for w in workers:
        click.echo(_worker_line(w))


@click.command("drain", cls=ReportingCommand, short_help="Ask a connected worker to drain.")
@click.argument("worker_id")
@click.option(
    "--grace-s",
    type=click.FloatRange(0),
    default=None,
    help="Seconds running turns get to finish [default: the worker's own setting].",
)
@_admin_control_plane
@_admin_timeout
@json_option
@click.pass_context
def drain_worker(
    ctx: click.Context,
    worker_id: str,
    grace_s: float | None,
    control_plane: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Ask a connected worker to drain: it finishes its turns, snapshots, releases, exits."""
    with make_client(_admin_target(ctx, control_plane), timeout_s) as client:
        status = client.drain_worker(worker_id, grace_s)
    if as_json:
        echo_json(status)
    else:
        click.echo(f"{status.worker_id} draining" if status.draining else _worker_line(status))


@click.command("tokens", cls=ReportingCommand)
@_admin_control_plane
@_admin_timeout
@json_option
@click.pass_context
def list_worker_tokens(ctx: click.Context, control_plane: str | None, timeout_s: float, as_json: bool) -> None:
    """List the owner's worker tokens (TETHER_API_KEY, TETHER_OWNER), newest first."""
    with make_client(_admin_target(ctx, control_plane), timeout_s) as client:
        tokens = client.list_worker_tokens()
    if as_json:
        echo_json({"tokens": tokens})
        return
    for t in tokens:
        state = "revoked" if t.revoked else "valid"
        click.echo(f"{t.token_id}  {state:8}  worker={t.worker_id}  {t.name}")


@click.command("revoke", cls=ReportingCommand)
@click.argument("token_id")
@_admin_control_plane
@_admin_timeout
@click.pass_context
def revoke_worker_token(ctx: click.Context, token_id: str, control_plane: str | None, timeout_s: float) -> None:
    """Revoke a worker token: the worker is cut off at once and its sessions move."""
    with make_client(_admin_target(ctx, control_plane), timeout_s) as client:
        token = client.revoke_worker_token(token_id)
    click.echo(f"{token.token_id} revoked (worker {token.worker_id})")


@click.command("pair", cls=ReportingCommand)
@click.option(
    "--control-plane",
    envvar="TETHER_CONTROL_PLANE",
    show_envvar=True,
    default=DEFAULT_TARGET,
    show_default=True,
    help="Address of the control plane.",
)
@click.option(
    "--ttl-s", type=click.FloatRange(1, 86400), default=None, help="How long the code works, in seconds [default: 600]."
)
@click.option(
    "--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, show_default=True, help="Deadline of the call, in seconds."
)
@json_option
def pair(control_plane: str, ttl_s: float | None, timeout_s: float, as_json: bool) -> None:
    """Issue a one-time pairing code for a new worker of the owner of TETHER_API_KEY (or of
    TETHER_OWNER, with a backend key). On the worker's machine:
    `tether worker pair --code CODE`."""
    with make_client(control_plane, timeout_s) as client:
        code = client.create_pairing_code(ttl_s)
    if as_json:
        echo_json(code)
        return
    expires = code.expire_time.isoformat(timespec="seconds") if code.expire_time else "?"
    # Only the code on stdout, so CODE=$(tether pair) works; the note goes to stderr.
    click.echo(code.code)
    click.echo(f"# owner {code.owner}; works once, until {expires}: tether worker pair --code CODE", err=True)
