"""The schema as released before owners: the tables `create_all` made at commit 91ae982.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Self-contained on purpose: a migration describes the tables of its own day, never today's models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _session_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["session_id"], ["sessions.session_id"], name=op.f(f"fk_{table}_session_id_sessions"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("runtime", sa.String(128), nullable=False),
        sa.Column("worker_selector_json", sa.Text(), nullable=False),
        sa.Column("labels_json", sa.Text(), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("runtime_thread_id", sa.String(256), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.Column("update_time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_sessions")),
    )
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("registration_id", sa.String(64), nullable=False),
        sa.Column("runtimes_json", sa.Text(), nullable=False),
        sa.Column("labels_json", sa.Text(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("registered_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_workers")),
    )
    op.create_table(
        "events",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("turn_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("lease_epoch", sa.BigInteger(), nullable=False),
        sa.Column("worker_seq", sa.BigInteger(), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        _session_fk("events"),
        sa.PrimaryKeyConstraint("session_id", "seq", name=op.f("pk_events")),
    )
    op.create_table(
        "leases",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("granted_at_us", sa.BigInteger(), nullable=False),
        _session_fk("leases"),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_leases")),
    )
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("turn_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(256), nullable=False),
        sa.Column("params_json", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("item_id", sa.String(256), nullable=False),
        sa.Column("available_json", sa.Text(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("response_json", sa.Text(), nullable=False),
        sa.Column("expire_reason", sa.Text(), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.Column("resolve_time_us", sa.BigInteger(), nullable=False),
        _session_fk("requests"),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_requests")),
    )
    op.create_index("ix_requests_session", "requests", ["session_id", "create_time_us"])
    op.create_table(
        "snapshots",
        sa.Column("snapshot_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("lease_epoch", sa.BigInteger(), nullable=False),
        sa.Column("runtime", sa.String(128), nullable=False),
        sa.Column("runtime_metadata_json", sa.Text(), nullable=False),
        sa.Column("history", sa.LargeBinary(), nullable=False),
        sa.Column("history_count", sa.Integer(), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        _session_fk("snapshots"),
        sa.PrimaryKeyConstraint("snapshot_id", name=op.f("pk_snapshots")),
    )
    op.create_index("ix_snapshots_session_seq", "snapshots", ["session_id", "seq"])
    op.create_table(
        "turns",
        sa.Column("turn_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("lease_epoch", sa.BigInteger(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.Column("end_time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("turn_id", name=op.f("pk_turns")),
        sa.UniqueConstraint("session_id", "idempotency_key", name=op.f("uq_turns_session_id")),
        _session_fk("turns"),
    )
    op.create_index("ix_turns_session_ordinal", "turns", ["session_id", "ordinal"])
    op.create_index("ix_turns_state", "turns", ["state"])


def downgrade() -> None:
    for table in ("turns", "snapshots", "requests", "leases", "events", "workers", "sessions"):
        op.drop_table(table)
