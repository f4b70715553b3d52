"""`tether serve`: run a control plane."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from tether import logs
from tether.logs import tracing

from ._server import StartupError, serve_forever
from ._settings import Settings
from .domain.access import Limits
from .domain.messages import Retention, RetentionPolicy, Timings

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration_s(text: str, option: str) -> float:
    """'0', '90s', '15m', '12h' or '30d' (a bare number is seconds) in seconds."""
    value = text.strip().lower()
    number, unit = (value[:-1], value[-1]) if value and value[-1] in _UNITS else (value, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise click.BadParameter(
            f"expected a duration such as 30d, 12h, 15m or 90s, got {text!r}", param_hint=option
        ) from None
    if seconds < 0:
        raise click.BadParameter(f"must not be negative, got {text!r}", param_hint=option)
    return seconds


def _retention_option(flag: str, envvar: str, help: str) -> Callable[[_F], _F]:
    """A retention time option: a DURATION (see `_duration_s`), default 0: never."""
    return click.option(
        flag, default="0", show_default=True, metavar="DURATION", envvar=envvar, show_envvar=True, help=help
    )


def _owner_retention(text: str) -> tuple[str, RetentionPolicy]:
    """'OWNER:archive=30d,delete=90d' as (owner, policy)."""
    owner, sep, spec = text.rpartition(":")
    if not sep or not owner:
        raise click.BadParameter(
            f"expected OWNER:archive=DURATION,delete=DURATION,compact=DURATION, got {text!r}",
            param_hint="--owner-retention",
        )
    times = {"archive": 0.0, "delete": 0.0, "compact": 0.0}
    for part in filter(None, spec.split(",")):
        name, eq, value = part.partition("=")
        if not eq or name.strip() not in times:
            raise click.BadParameter(
                f"expected archive=, delete= or compact=DURATION, got {part!r}", param_hint="--owner-retention"
            )
        times[name.strip()] = _duration_s(value, "--owner-retention")
    return owner, RetentionPolicy(times["archive"], times["delete"], times["compact"])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
def serve(
    host: str,
    port: int,
    db: str,
    migrate: bool,
    db_pool_size: int,
    replica_id: str,
    advertise_address: str,
    sqlite_synchronous: str,
    heartbeat_interval_s: float,
    idle_heartbeat_interval_s: float,
    liveness_timeout_s: float | None,
    worker_dead_grace_s: float,
    lease_ttl_s: float,
    sticky_timeout_s: float,
    offer_timeout_s: float,
    session_idle_s: float,
    interrupt_grace_s: float,
    max_turn_s: float,
    queue_timeout_s: float,
    grant_with_offer: bool,
    max_message_bytes: int,
    max_import_mib: int,
    max_workspace_mib: int,
    max_workspace_files: int,
    max_blob_storage_mib: int,
    archive_idle_after: str,
    delete_idle_after: str,
    compact_events_after: str,
    owner_retention: tuple[str, ...],
    retention_sweep_s: float,
    dev: bool,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    http_port: int | None,
    http_host: str,
    http_cors_origins: tuple[str, ...],
    http_tls_cert: str | None,
    http_tls_key: str | None,
    console: bool,
    console_dir: str | None,
    max_active_sessions_per_owner: int,
    max_queued_turns_per_owner: int,
    events_per_second_per_session: float,
    max_pending_pairing_codes_per_owner: int,
    pairing_failures_per_minute: int,
    port_file: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run a Tether control plane (SQLite by default)."""
    logs.configure(log_level, log_format)
    try:
        tracing.configure("tether-control-plane")
    except tracing.TracingUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if heartbeat_interval_s >= lease_ttl_s:
        raise click.BadParameter("must be shorter than --lease-ttl-s", param_hint="--heartbeat-interval-s")
    if idle_heartbeat_interval_s and idle_heartbeat_interval_s < heartbeat_interval_s:
        raise click.BadParameter(
            "must be 0 or at least --heartbeat-interval-s", param_hint="--idle-heartbeat-interval-s"
        )
    if liveness_timeout_s is None:
        liveness_timeout_s = 3 * heartbeat_interval_s
    if liveness_timeout_s <= heartbeat_interval_s:
        raise click.BadParameter("must be longer than --heartbeat-interval-s", param_hint="--liveness-timeout-s")
    if bool(tls_cert) != bool(tls_key):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    if tls_client_ca and not tls_cert:
        raise click.BadParameter(
            "mutual TLS needs the server's own --tls-cert and --tls-key", param_hint="--tls-client-ca"
        )
    if dev and not _is_loopback(host):
        raise click.BadParameter(
            "--dev lets anyone in without credentials; it is only allowed on a loopback address", param_hint="--dev"
        )
    _check_http(http_port, http_host, http_tls_cert, http_tls_key, console, console_dir, dev)
    if http_port is not None and not _is_loopback(http_host) and not (http_tls_cert or tls_cert):
        logging.getLogger("tether").warning(
            "serving plaintext HTTP on non-loopback address %s: keys cross the network in the clear; "
            "use --http-tls-cert and --http-tls-key (or --tls-cert and --tls-key)",
            http_host,
        )
    if not _is_loopback(host) and not tls_cert:
        logging.getLogger("tether").warning(
            "serving plaintext gRPC on non-loopback address %s: keys and tokens cross the network in the clear; "
            "use --tls-cert and --tls-key",
            host,
        )
    settings = Settings(
        host=host,
        port=port,
        db=db,
        migrate=migrate,
        db_pool_size=db_pool_size,
        replica_id=replica_id,
        advertise_address=advertise_address,
        sqlite_synchronous=sqlite_synchronous,
        max_message_bytes=max_message_bytes,
        dev_owner="local" if dev else "",
        tls_cert_file=tls_cert or "",
        tls_key_file=tls_key or "",
        tls_client_ca_file=tls_client_ca or "",
        http_port=http_port,
        http_host=http_host,
        http_cors_origins=tuple(_cors_origin(o) for o in http_cors_origins),
        http_tls_cert_file=http_tls_cert or "",
        http_tls_key_file=http_tls_key or "",
        console=console,
        console_dir=console_dir or "",
        limits=Limits(
            max_active_sessions_per_owner=max_active_sessions_per_owner,
            max_queued_turns_per_owner=max_queued_turns_per_owner,
            events_per_second_per_session=events_per_second_per_session,
            event_burst_per_session=int(events_per_second_per_session * 10),
            max_pending_pairing_codes_per_owner=max_pending_pairing_codes_per_owner,
            pairing_failures_per_minute=pairing_failures_per_minute,
            max_import_mib=max_import_mib,
            max_workspace_bytes=max_workspace_mib << 20,
            max_workspace_files=max_workspace_files,
            max_blob_bytes_per_owner=max_blob_storage_mib << 20,
        ),
        retention=Retention(
            default=RetentionPolicy(
                _duration_s(archive_idle_after, "--archive-idle-after"),
                _duration_s(delete_idle_after, "--delete-idle-after"),
                _duration_s(compact_events_after, "--compact-events-after"),
            ),
            by_owner=tuple(_owner_retention(o) for o in owner_retention),
            sweep_s=retention_sweep_s,
        ),
        timings=dataclasses.replace(
            Timings(),
            heartbeat_interval_s=heartbeat_interval_s,
            idle_heartbeat_interval_s=idle_heartbeat_interval_s,
            liveness_timeout_s=liveness_timeout_s,
            worker_dead_grace_s=worker_dead_grace_s,
            lease_ttl_s=lease_ttl_s,
            sticky_timeout_s=sticky_timeout_s,
            offer_timeout_s=offer_timeout_s,
            session_idle_s=session_idle_s,
            interrupt_grace_s=interrupt_grace_s,
            max_turn_s=max_turn_s,
            queue_timeout_s=queue_timeout_s,
            grant_with_offer=grant_with_offer,
        ),
    )
    try:
        _run(serve_forever(settings, port_file))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def _check_http(
    port: int | None,
    host: str,
    tls_cert: str | None,
    tls_key: str | None,
    console: bool,
    console_dir: str | None,
    dev: bool,
) -> None:
    if port is None:
        for flag, given in (
            ("--http-tls-cert", tls_cert),
            ("--http-tls-key", tls_key),
            ("--console", console),
            ("--console-dir", console_dir),
        ):
            if given:
                raise click.BadParameter("needs the HTTP port: add --http-port", param_hint=flag)
        return
    if bool(tls_cert) != bool(tls_key):
        raise click.BadParameter("--http-tls-cert and --http-tls-key go together", param_hint="--http-tls-cert")
    if console_dir and not console:
        raise click.BadParameter("only means something with --console", param_hint="--console-dir")
    if dev and not _is_loopback(host):
        raise click.BadParameter(
            "--dev lets anyone in without credentials; the HTTP port must then bind a loopback address",
            param_hint="--http-host",
        )


def _cors_origin(text: str) -> str:
    """An origin as browsers send it: scheme://host[:port], nothing after."""
    origin = text.strip().rstrip("/")
    scheme, sep, rest = origin.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in "/?#*"):
        raise click.BadParameter(
            f"expected an origin such as https://app.example.com or http://localhost:5173, got {text!r}",
            param_hint="--http-cors-origin",
        )
    return origin


def _run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop where it is installed; it has no build for Windows, where the stock loop runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
