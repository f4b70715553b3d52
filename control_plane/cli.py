"""`tether serve`: run a control plane. This module owns the command surface (its options,
their defaults and help); `_flags` turns them into checked `Settings`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from tether import logs
from tether.logs import tracing

from ._flags import settings_from_flags
from ._server import StartupError, serve_forever
from .domain.access import Limits

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def _retention_option(flag: str, envvar: str, help: str) -> Callable[[_F], _F]:
    """A retention time option: a DURATION (see `_flags._duration_s`), default 0: never."""
    return click.option(
        flag, default="0", show_default=True, metavar="DURATION", envvar=envvar, show_envvar=True, help=help
    )


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, envvar="TETHER_HOST", show_envvar=True, help="Address to bind."
)
@click.option(
    "--port",
    default=7670,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="TETHER_PORT",
    show_envvar=True,
    help="Port (0 picks a free one).",
)
@click.option(
    "--db",
    default="tether.db",
    show_default=True,
    envvar="TETHER_DB",
    show_envvar=True,
    help="SQLite file path or SQLAlchemy URL.",
)
@click.option(
    "--migrate",
    is_flag=True,
    envvar="TETHER_MIGRATE",
    show_envvar=True,
    help="Upgrade the database's tables to this release at start (as `tether db upgrade` does; sessions and workers from before owners go to owner 'local'). Without it only a new SQLite file is set up; any other database must be upgraded first.",
)
@click.option(
    "--db-pool-size",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    envvar="TETHER_DB_POOL_SIZE",
    show_envvar=True,
    help="Database connections this replica keeps open (plus up to 10 more under load).",
)
@click.option(
    "--replica-id",
    default="",
    envvar="TETHER_REPLICA_ID",
    show_envvar=True,
    help="This replica's unique name among the replicas on one PostgreSQL database.  [default: host name and process id]",
)
@click.option(
    "--advertise-address",
    default="",
    envvar="TETHER_ADVERTISE_ADDRESS",
    show_envvar=True,
    help="host:port the other replicas reach this one at, to relay calls to it while it leads.  [default: --host and the bound port]",
)
@click.option(
    "--sqlite-synchronous",
    type=click.Choice(["NORMAL", "FULL"]),
    default="NORMAL",
    show_default=True,
    envvar="TETHER_SQLITE_SYNCHRONOUS",
    show_envvar=True,
    help="FULL also survives power loss.",
)
@click.option(
    "--heartbeat-interval-s",
    type=click.FloatRange(0.05),
    default=2.0,
    show_default=True,
    envvar="TETHER_HEARTBEAT_INTERVAL_S",
    show_envvar=True,
    help="How often workers renew on their Lease stream.",
)
@click.option(
    "--idle-heartbeat-interval-s",
    type=click.FloatRange(0.0),
    default=20.0,
    show_default=True,
    envvar="TETHER_IDLE_HEARTBEAT_INTERVAL_S",
    show_envvar=True,
    help="How often a worker holding no lease and running no turn renews (0: every heartbeat interval); "
    "HTTP/2 keepalive pings watch its connection meanwhile.",
)
@click.option(
    "--liveness-timeout-s",
    type=click.FloatRange(0.1),
    default=None,
    envvar="TETHER_LIVENESS_TIMEOUT_S",
    show_envvar=True,
    help="Close a Lease stream silent this long.  [default: 3 x heartbeat interval]",
)
@click.option(
    "--worker-dead-grace-s",
    type=click.FloatRange(0.0),
    default=1.0,
    show_default=True,
    envvar="TETHER_WORKER_DEAD_GRACE_S",
    show_envvar=True,
    help="Move a disconnected worker's sessions if it is not back within this.",
)
@click.option(
    "--lease-ttl-s",
    type=click.FloatRange(0.1),
    default=15.0,
    show_default=True,
    envvar="TETHER_LEASE_TTL_S",
    show_envvar=True,
    help="Move a session whose lease is not renewed within this.",
)
@click.option(
    "--sticky-timeout-s",
    type=click.FloatRange(0.0),
    default=5.0,
    show_default=True,
    envvar="TETHER_STICKY_TIMEOUT_S",
    show_envvar=True,
    help="How long a turn waits for its busy warm worker before moving.",
)
@click.option(
    "--offer-timeout-s",
    type=click.FloatRange(0.05),
    default=10.0,
    show_default=True,
    envvar="TETHER_OFFER_TIMEOUT_S",
    show_envvar=True,
    help="Requeue an offer not accepted within this.",
)
@click.option(
    "--session-idle-s",
    type=click.FloatRange(0.1),
    default=300.0,
    show_default=True,
    envvar="TETHER_SESSION_IDLE_S",
    show_envvar=True,
    help="Drop a session from memory this long after its last use, unless it is live "
    "(a turn open, a lease held, a subscriber following); it reloads from the database on demand.",
)
@_retention_option(
    "--archive-idle-after",
    "TETHER_ARCHIVE_IDLE_AFTER",
    "Archive a session idle this long (no turn open, no event): 30d, 12h, 90s; 0: never.",
)
@_retention_option(
    "--delete-idle-after",
    "TETHER_DELETE_IDLE_AFTER",
    "Delete a session idle this long, archived or not: 90d, 12h, 90s; 0: never.",
)
@_retention_option(
    "--compact-events-after",
    "TETHER_COMPACT_EVENTS_AFTER",
    "Drop events older than this once the session's newest snapshot covers them: 30d, 12h; 0: keep all.",
)
@click.option(
    "--owner-retention",
    "owner_retention",
    multiple=True,
    metavar="OWNER:archive=DURATION,delete=DURATION,compact=DURATION",
    help="One owner's times instead of the three above (repeatable; a time left out is 0: never).",
)
@click.option(
    "--retention-sweep-s",
    type=click.FloatRange(0.05),
    default=60.0,
    show_default=True,
    envvar="TETHER_RETENTION_SWEEP_S",
    show_envvar=True,
    help="How often idle sessions are looked for (only when an idle time is set).",
)
@click.option(
    "--interrupt-grace-s",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    envvar="TETHER_INTERRUPT_GRACE_S",
    show_envvar=True,
    help="End an interrupted turn whose worker has not stopped it within this (turn_interrupted) and "
    "take the session's lease back.",
)
@click.option(
    "--max-turn-s",
    type=click.FloatRange(0.0),
    default=0.0,
    show_default=True,
    envvar="TETHER_MAX_TURN_S",
    show_envvar=True,
    help="Interrupt a turn running longer than this (0: no maximum); --interrupt-grace-s then applies.",
)
@click.option(
    "--queue-timeout-s",
    type=click.FloatRange(0.0),
    default=0.0,
    show_default=True,
    envvar="TETHER_QUEUE_TIMEOUT_S",
    show_envvar=True,
    help="Fail a queued turn that no connected worker can take (runtime, labels, draining) after this, "
    "NO_WORKER (0: it waits as long as it takes).",
)
@click.option(
    "--grant-with-offer/--no-grant-with-offer",
    default=False,
    show_default=True,
    envvar="TETHER_GRANT_WITH_OFFER",
    show_envvar=True,
    help="Start a warm session's turn in its input's commit and send the grant with the offer (one "
    "round and one commit fewer per turn). A turn sent to a worker that died before the control plane "
    "noticed then fails WORKER_LOST instead of moving (docs/operations.md).",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(1024),
    default=4 << 20,
    show_default=True,
    envvar="TETHER_MAX_MESSAGE_BYTES",
    show_envvar=True,
)
@click.option(
    "--dev",
    is_flag=True,
    envvar="TETHER_DEV",
    show_envvar=True,
    help="Development only: let callers without credentials in, acting as owner 'local' (or the owner they name in x-tether-owner). Refused on a non-loopback address.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="TETHER_TLS_CERT",
    show_envvar=True,
    help="Serve TLS with this certificate (PEM; with --tls-key).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="TETHER_TLS_KEY",
    show_envvar=True,
    help="The certificate's private key (PEM).",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="TETHER_TLS_CLIENT_CA",
    show_envvar=True,
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="TETHER_HTTP_PORT",
    show_envvar=True,
    help="Also serve SessionService and AdminService over HTTP (Connect, gRPC-Web and gRPC; HTTP/1.1 and "
    "HTTP/2) on this port, for browsers and curl (0 picks a free one).  [default: off]",
)
@click.option(
    "--http-host",
    default="127.0.0.1",
    show_default=True,
    envvar="TETHER_HTTP_HOST",
    show_envvar=True,
    help="Address the HTTP port binds.",
)
@click.option(
    "--http-cors-origin",
    "http_cors_origins",
    multiple=True,
    metavar="ORIGIN",
    envvar="TETHER_HTTP_CORS_ORIGIN",
    show_envvar=True,
    help="A web origin (scheme://host[:port]) whose pages may call the HTTP port from a browser (repeatable; "
    "the environment variable takes several separated by spaces). The port's own origin always may.",
)
@click.option(
    "--http-tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="TETHER_HTTP_TLS_CERT",
    show_envvar=True,
    help="Serve the HTTP port's TLS with this certificate (PEM; with --http-tls-key).  [default: --tls-cert]",
)
@click.option(
    "--http-tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="TETHER_HTTP_TLS_KEY",
    show_envvar=True,
    help="The HTTP certificate's private key (PEM).  [default: --tls-key]",
)
@click.option(
    "--console",
    is_flag=True,
    envvar="TETHER_CONSOLE",
    show_envvar=True,
    help="Serve the web console under /console/ on the HTTP port (built by `make web`).",
)
@click.option(
    "--console-dir",
    type=click.Path(file_okay=False),
    default=None,
    envvar="TETHER_CONSOLE_DIR",
    show_envvar=True,
    help="Serve the console from this directory instead of the installed build.",
)
@click.option(
    "--max-active-sessions-per-owner",
    type=click.IntRange(1),
    default=Limits.max_active_sessions_per_owner,
    show_default=True,
    envvar="TETHER_MAX_ACTIVE_SESSIONS_PER_OWNER",
    show_envvar=True,
    help="Sessions of one owner with a turn queued or running at once.",
)
@click.option(
    "--max-queued-turns-per-owner",
    type=click.IntRange(1),
    default=Limits.max_queued_turns_per_owner,
    show_default=True,
    envvar="TETHER_MAX_QUEUED_TURNS_PER_OWNER",
    show_envvar=True,
    help="Turns of one owner waiting for a worker.",
)
@click.option(
    "--max-workspace-mib",
    type=click.IntRange(1),
    default=Limits.max_workspace_bytes >> 20,
    show_default=True,
    envvar="TETHER_MAX_WORKSPACE_MIB",
    show_envvar=True,
    help="Largest workspace checkpoint of a session, in MiB of file content.",
)
@click.option(
    "--max-workspace-files",
    type=click.IntRange(1),
    default=Limits.max_workspace_files,
    show_default=True,
    envvar="TETHER_MAX_WORKSPACE_FILES",
    show_envvar=True,
    help="Most files (and symlinks) in a workspace checkpoint of a session.",
)
@click.option(
    "--max-blob-storage-mib",
    type=click.IntRange(1),
    default=Limits.max_blob_bytes_per_owner >> 20,
    show_default=True,
    envvar="TETHER_MAX_BLOB_STORAGE_MIB",
    show_envvar=True,
    help="Workspace blobs (file contents, manifest chunks) one owner may store in all, in MiB.",
)
@click.option(
    "--max-import-mib",
    type=click.IntRange(1),
    default=Limits.max_import_mib,
    show_default=True,
    envvar="TETHER_MAX_IMPORT_MIB",
    show_envvar=True,
    help="Largest session bundle ImportSession reads, in MiB, less its workspace blobs (the rest is held in "
    "memory while checked; blobs are stored as they arrive, within the workspace limits).",
)
@click.option(
    "--events-per-second-per-session",
    type=click.FloatRange(1),
    default=Limits.events_per_second_per_session,
    show_default=True,
    envvar="TETHER_EVENTS_PER_SECOND_PER_SESSION",
    show_envvar=True,
    help="Sustained event rate one session's worker may write (bursts of 10x allowed).",
)
@click.option(
    "--max-pending-pairing-codes-per-owner",
    type=click.IntRange(1),
    default=Limits.max_pending_pairing_codes_per_owner,
    show_default=True,
    envvar="TETHER_MAX_PENDING_PAIRING_CODES_PER_OWNER",
    show_envvar=True,
)
@click.option(
    "--pairing-failures-per-minute",
    type=click.IntRange(1),
    default=Limits.pairing_failures_per_minute,
    show_default=True,
    envvar="TETHER_PAIRING_FAILURES_PER_MINUTE",
    show_envvar=True,
    help="Invalid pairing codes one address may try per minute.",
)
@click.option(
    "--port-file", type=click.Path(dir_okay=False), default=None, help="Write the bound port here once serving."
)
@click.option("--log-level", default="INFO", show_default=True, envvar="TETHER_LOG_LEVEL", show_envvar=True)
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default="text",
    show_default=True,
    envvar="TETHER_LOG_FORMAT",
    show_envvar=True,
    help="json: one JSON object per line on stderr, with the session, turn, worker and owner ids it concerns.",
)
def serve(port_file: str | None, log_level: str, log_format: str, **flags: Any) -> None:
    """Run a Tether control plane (SQLite by default)."""
    logs.configure(log_level, log_format)
    try:
        tracing.configure("tether-control-plane")
    except tracing.TracingUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    settings = settings_from_flags(**flags)
    try:
        _run(serve_forever(settings, port_file))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def _run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop where it is installed; it has no build for Windows, where the stock loop runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
