"""Settings of one control plane, built at the CLI edge (flags and TETHER_* environment)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .domain.access import Limits
from .domain.messages import Retention, Timings


@dataclass(frozen=True)
class Settings:
    """`dev_owner`, when set, lets callers without credentials in, acting for that owner (and
    for any owner they name): for a control plane on loopback during development only. The
    `tls_*` files turn on TLS; `tls_client_ca_file` also requires client certificates (mTLS)."""

    host: str = "127.0.0.1"
    port: int = 7670
    db: str = "tether.db"  # a file path (SQLite) or a SQLAlchemy URL
    migrate: bool = False  # upgrade the database's tables at start (else only a new SQLite file)
    sqlite_synchronous: str = "NORMAL"
    db_pool_size: int = 5
    # Replicas on one PostgreSQL database (store/_election.py): this one's unique name, and the
    # address the others relay calls to when it leads ("" = HOST:PORT as bound).
    replica_id: str = ""
    advertise_address: str = ""
    max_message_bytes: int = 4 << 20
    shutdown_grace_s: float = 5.0
    # Workspace blobs no checkpoint names are collected this often, once unused this long (a
    # checkpoint being uploaded uses its blobs; see domain/_workspaces.py).
    blob_gc_interval_s: float = 600.0
    blob_gc_grace_s: float = 3600.0
    timings: Timings = field(default_factory=Timings)
    limits: Limits = field(default_factory=Limits)
    retention: Retention = field(default_factory=Retention)
    dev_owner: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # The HTTP port (control_plane/http): the contract over Connect, gRPC-Web and gRPC for
    # browsers and curl; None: off. Its TLS files default to the gRPC port's (tls_client_ca_file
    # applies to both); a browser may call it from its own origin and from http_cors_origins.
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    http_cors_origins: tuple[str, ...] = ()
    http_tls_cert_file: str = ""
    http_tls_key_file: str = ""
    # The web console under /console/ on the HTTP port; "" serves the packaged build (make web).
    console: bool = False
    console_dir: str = ""
