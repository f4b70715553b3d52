"""`tether serve`: run a control plane."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging

import click

from ._server import StartupError, serve_forever
from ._settings import Settings
from .domain.hub import Timings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="TETHER_HOST", help="Address to bind.")
@click.option("--port", default=7670, show_default=True, type=click.IntRange(0, 65535), envvar="TETHER_PORT", help="Port (0 picks a free one).")
@click.option("--db", default="tether.db", show_default=True, envvar="TETHER_DB", help="SQLite file path or SQLAlchemy URL.")
@click.option("--sqlite-synchronous", type=click.Choice(["NORMAL", "FULL"]), default="NORMAL", show_default=True, envvar="TETHER_SQLITE_SYNCHRONOUS", help="FULL also survives power loss.")
@click.option("--heartbeat-interval-s", type=click.FloatRange(0.05), default=2.0, show_default=True, envvar="TETHER_HEARTBEAT_INTERVAL_S", help="How often workers renew on their Lease stream.")
@click.option("--liveness-timeout-s", type=click.FloatRange(0.1), default=None, envvar="TETHER_LIVENESS_TIMEOUT_S", help="Close a Lease stream silent this long.  [default: 3 x heartbeat interval]")
@click.option("--worker-dead-grace-s", type=click.FloatRange(0.0), default=1.0, show_default=True, envvar="TETHER_WORKER_DEAD_GRACE_S", help="Move a disconnected worker's sessions if it is not back within this.")
@click.option("--lease-ttl-s", type=click.FloatRange(0.1), default=15.0, show_default=True, envvar="TETHER_LEASE_TTL_S", help="Move a session whose lease is not renewed within this.")
@click.option("--sticky-timeout-s", type=click.FloatRange(0.0), default=5.0, show_default=True, envvar="TETHER_STICKY_TIMEOUT_S", help="How long a turn waits for its busy warm worker before moving.")
@click.option("--offer-timeout-s", type=click.FloatRange(0.05), default=10.0, show_default=True, envvar="TETHER_OFFER_TIMEOUT_S", help="Requeue an offer not accepted within this.")
@click.option("--max-message-bytes", type=click.IntRange(1024), default=4 << 20, show_default=True, envvar="TETHER_MAX_MESSAGE_BYTES")
@click.option("--port-file", type=click.Path(dir_okay=False), default=None, help="Write the bound port here once serving.")
@click.option("--log-level", default="INFO", show_default=True, envvar="TETHER_LOG_LEVEL")
def serve(
    host: str,
    port: int,
    db: str,
    sqlite_synchronous: str,
    heartbeat_interval_s: float,
    liveness_timeout_s: float | None,
    worker_dead_grace_s: float,
    lease_ttl_s: float,
    sticky_timeout_s: float,
    offer_timeout_s: float,
    max_message_bytes: int,
    port_file: str | None,
    log_level: str,
) -> None:
    """Run a Tether control plane (SQLite by default)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if heartbeat_interval_s >= lease_ttl_s:
        raise click.BadParameter("must be shorter than --lease-ttl-s", param_hint="--heartbeat-interval-s")
    if liveness_timeout_s is None:
        liveness_timeout_s = 3 * heartbeat_interval_s
    if liveness_timeout_s <= heartbeat_interval_s:
        raise click.BadParameter("must be longer than --heartbeat-interval-s", param_hint="--liveness-timeout-s")
    if not _is_loopback(host):
        logging.getLogger("tether").warning(
            "serving plaintext gRPC on non-loopback address %s: anyone who can reach it can use it", host
        )
    settings = Settings(
        host=host,
        port=port,
        db=db,
        sqlite_synchronous=sqlite_synchronous,
        max_message_bytes=max_message_bytes,
        timings=dataclasses.replace(
            Timings(),
            heartbeat_interval_s=heartbeat_interval_s,
            liveness_timeout_s=liveness_timeout_s,
            worker_dead_grace_s=worker_dead_grace_s,
            lease_ttl_s=lease_ttl_s,
            sticky_timeout_s=sticky_timeout_s,
            offer_timeout_s=offer_timeout_s,
        ),
    )
    import uvloop

    try:
        uvloop.run(serve_forever(settings, port_file))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
