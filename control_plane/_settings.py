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
