"""ORM rows: the durable tables of the control plane.

Times are integer microseconds since the Unix epoch (`*_us`): cheap to write in bulk, exact,
and the same on SQLite and PostgreSQL. Event and snapshot bodies are the contract's own
protobuf encoding, stored as opaque bytes: the store never needs to look inside them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(row: type[Base]) -> Table:
    """A row class's Table (the declarative base types `__table__` as any FromClause)."""
    table = row.__table__
    assert isinstance(table, Table)
    return table


class WorkerRow(Base):
    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(256), default="")
    name: Mapped[str] = mapped_column(String(256), default="")
    registration_id: Mapped[str] = mapped_column(String(64))
    runtimes_json: Mapped[str] = mapped_column(Text, default="[]")
    labels_json: Mapped[str] = mapped_column(Text, default="{}")
    slots: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64), default="")
    registered_at_us: Mapped[int] = mapped_column(BigInteger)


class SessionRow(Base):
    __tablename__ = "sessions"
    # Every list is one owner's: (owner, id) serves ListSessions from the index alone.
    __table_args__ = (
        Index("ix_sessions_owner_session", "owner_id", "session_id"),
        Index("ix_sessions_delete_time", "delete_time_us"),
    )

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(256))
    runtime: Mapped[str] = mapped_column(String(128))
    worker_selector_json: Mapped[str] = mapped_column(Text, default="{}")
    labels_json: Mapped[str] = mapped_column(Text, default="{}")
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    runtime_thread_id: Mapped[str] = mapped_column(String(256), default="")
    create_time_us: Mapped[int] = mapped_column(BigInteger)
    # Last change to the row itself; a session's update time as shown is the later of this and
    # its last event's time, so new input costs no session write.
    update_time_us: Mapped[int] = mapped_column(BigInteger)
    # ForkSession: the session and turn this one was copied from ("" for a session created new).
    forked_from_session_id: Mapped[str] = mapped_column(String(64), default="")
    forked_from_turn_id: Mapped[str] = mapped_column(String(64), default="")
    # UpdateSession's, or the first input's first line (set with the first turn).
    title: Mapped[str] = mapped_column(String(256), default="")
    # When a scheduled deletion (DeleteSession's delete_after) deletes the session; 0: none.
    delete_time_us: Mapped[int] = mapped_column(BigInteger, default=0)
    # Retention compacted away the events with a seq at or below this (0: none).
    compacted_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Its workspace moves with it since it was created (false for sessions made before 0005).
    tracks_workspace: Mapped[bool] = mapped_column(Boolean, default=True)


class TurnRow(Base):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("session_id", "idempotency_key"),
        Index("ix_turns_session_ordinal", "session_id", "ordinal"),
        Index("ix_turns_state", "state"),
    )

    turn_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), ForeignKey("sessions.session_id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    input: Mapped[str] = mapped_column(Text)
    # NULL, not "", when absent, so the unique constraint only binds real keys.
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    state: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str] = mapped_column(String(128), default="")
    lease_epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    exit_code: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str] = mapped_column(Text, default="")
    create_time_us: Mapped[int] = mapped_column(BigInteger)
    end_time_us: Mapped[int] = mapped_column(BigInteger, default=0)
    # RevertSession moved the session's head before this turn (it left the model's history).
    reverted: Mapped[bool] = mapped_column(Boolean, default=False)
    # The turn list's summary (ListTurns): when a worker started it, the seqs of its first and
    # terminal events, the body of its last token_usage event and its last agent message.
    start_time_us: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    usage: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    final_message: Mapped[str] = mapped_column(Text, default="")
    # SendInput's output schema ("" for none) and the validated result of a turn that had one.
    output_schema: Mapped[str] = mapped_column(Text, default="")
    result_json: Mapped[str] = mapped_column(Text, default="")


class EventRow(Base):
    __tablename__ = "events"

    session_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    turn_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    lease_epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    # The worker's own number for the event under lease_epoch; 0 for events the control plane
    # wrote. Lets a restarted control plane drop a resent duplicate.
    worker_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time_us: Mapped[int] = mapped_column(BigInteger)


class LeaseRow(Base):
    __tablename__ = "leases"

    session_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True
    )
    # Empty when the lease was released or expired; the epoch stays, so it only ever grows.
    worker_id: Mapped[str] = mapped_column(String(128), default="")
    epoch: Mapped[int] = mapped_column(BigInteger)
    granted_at_us: Mapped[int] = mapped_column(BigInteger)


class SnapshotRow(Base):
    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_session_seq", "session_id", "seq"),)

    snapshot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), ForeignKey("sessions.session_id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    worker_id: Mapped[str] = mapped_column(String(128))
    lease_epoch: Mapped[int] = mapped_column(BigInteger)
    runtime: Mapped[str] = mapped_column(String(128))
    runtime_metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    history: Mapped[bytes] = mapped_column(LargeBinary)
    history_count: Mapped[int] = mapped_column(Integer)
    create_time_us: Mapped[int] = mapped_column(BigInteger)


class CheckpointRow(Base):
    """A session's workspace checkpoint: the digests of its manifest chunks (comma-separated)."""

    __tablename__ = "workspace_checkpoints"

    session_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    turn_id: Mapped[str] = mapped_column(String(64), default="")
    chunk_digests: Mapped[str] = mapped_column(Text)
    file_count: Mapped[int] = mapped_column(BigInteger)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    create_time_us: Mapped[int] = mapped_column(BigInteger)


class BlobRow(Base):
    """A stored workspace blob of an owner; its content is in blob_chunks."""

    __tablename__ = "blobs"

    owner_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # When a checkpoint last relied on it (stored, or found held by FindMissingBlobs or a
    # manifest check): garbage collection spares what was used within its grace.
    used_time_us: Mapped[int] = mapped_column(BigInteger)


class BlobChunkRow(Base):
    """One piece (at most 1 MiB) of a blob, by index. Pieces of a blob still being uploaded
    have no blobs row yet."""

    __tablename__ = "blob_chunks"

    owner_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RequestRow(Base):
    """A runtime's pending request (an approval, a question) and, once given, its answer."""

    __tablename__ = "requests"
    __table_args__ = (Index("ix_requests_session", "session_id", "create_time_us"),)

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), ForeignKey("sessions.session_id", ondelete="CASCADE"))
    turn_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(256))
    params_json: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="")
    item_id: Mapped[str] = mapped_column(String(256), default="")
    available_json: Mapped[str] = mapped_column(Text, default="[]")
    state: Mapped[int] = mapped_column(Integer)
    response_json: Mapped[str] = mapped_column(Text, default="")
    expire_reason: Mapped[str] = mapped_column(Text, default="")
    create_time_us: Mapped[int] = mapped_column(BigInteger)
    resolve_time_us: Mapped[int] = mapped_column(BigInteger, default=0)


class ApiKeyRow(Base):
    """An application's API key: bound to one owner, or a trusted backend or admin key that
    names the owner it acts for on each call. Only the secret's SHA-256 is kept."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "owner", "backend" or "admin"
    owner_id: Mapped[str] = mapped_column(String(256), default="")  # "" unless kind is "owner"
    name: Mapped[str] = mapped_column(String(256), default="")
    create_time_us: Mapped[int] = mapped_column(BigInteger)
    revoke_time_us: Mapped[int] = mapped_column(BigInteger, default=0)


class WorkerTokenRow(Base):
    """A worker's credential, issued by pairing, bound to one owner and one worker id."""

    __tablename__ = "worker_tokens"
    __table_args__ = (Index("ix_worker_tokens_owner", "owner_id", "create_time_us"),)

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[str] = mapped_column(String(256))
    worker_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    create_time_us: Mapped[int] = mapped_column(BigInteger)
    revoke_time_us: Mapped[int] = mapped_column(BigInteger, default=0)


class PairingCodeRow(Base):
    """A one-time pairing code, by its hash. `consumed_time_us` is set by the one exchange
    that wins (a conditional UPDATE), in the transaction that issues the worker token."""

    __tablename__ = "pairing_codes"
    __table_args__ = (Index("ix_pairing_codes_owner", "owner_id", "expire_time_us"),)

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(256))
    create_time_us: Mapped[int] = mapped_column(BigInteger)
    expire_time_us: Mapped[int] = mapped_column(BigInteger)
    consumed_time_us: Mapped[int] = mapped_column(BigInteger, default=0)
    token_id: Mapped[str] = mapped_column(String(64), default="")


class LeadershipRow(Base):
    """The replica that serves, when several share a PostgreSQL database (store/_election.py).

    One row (id 1). `epoch` grows by one at each election and fences the leader's writes.
    """

    __tablename__ = "leadership"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger)
    replica_id: Mapped[str] = mapped_column(String(256))
    address: Mapped[str] = mapped_column(String(512))
    elected_at_us: Mapped[int] = mapped_column(BigInteger)
