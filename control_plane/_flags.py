"""`tether serve`'s flags turned into `Settings`: durations ('30d'), per-owner retention
('OWNER:archive=30d'), browser origins, and the checks that span several flags (TLS files that
go together, --dev only on loopback, what needs the HTTP port). Each refusal is a
click.BadParameter naming the flag; a plaintext non-loopback address is logged as a warning."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

import click

from ._settings import Settings
from .domain.access import Limits
from .domain.messages import Retention, RetentionPolicy, Timings

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


def _owner_policy(text: str) -> tuple[str, RetentionPolicy]:
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


def settings_from_flags(
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
) -> Settings:
    """The control plane's settings from `tether serve`'s flags, checked together."""
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
    return Settings(
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
            by_owner=tuple(_owner_policy(o) for o in owner_retention),
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
