"""Workspaces that move with their sessions: checkpoints and the blobs they name.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

- `sessions.tracks_workspace`: false for the sessions that exist (a worker may hold their files;
  they are left alone until the first checkpoint), true for every session made from now on;
- `workspace_checkpoints`: a session's workspace at a snapshot (its manifest chunks' digests),
  one per turn that was checkpointed; none for the sessions that exist;
- `blobs` and `blob_chunks`: owner-scoped, content-addressed file contents and manifest chunks,
  in pieces of at most 1 MiB (the embedded blob store, store/_blobs.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The sessions that exist were made before workspaces moved: their files stay where they are
    # until their first checkpoint. Added as NULL, filled, then made NOT NULL.
    op.add_column("sessions", sa.Column("tracks_workspace", sa.Boolean(), nullable=True))
    op.get_bind().execute(sa.table("sessions", sa.column("tracks_workspace")).update().values(tracks_workspace=False))
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column("tracks_workspace", existing_type=sa.Boolean(), nullable=False)
    op.create_table(
        "workspace_checkpoints",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("turn_id", sa.String(64), nullable=False),
        sa.Column("chunk_digests", sa.Text(), nullable=False),
        sa.Column("file_count", sa.BigInteger(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_workspace_checkpoints_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "seq", name=op.f("pk_workspace_checkpoints")),
    )
    op.create_table(
        "blobs",
        sa.Column("owner_id", sa.String(128), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("used_time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", "digest", name=op.f("pk_blobs")),
    )
    op.create_table(
        "blob_chunks",
        sa.Column("owner_id", sa.String(128), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", "digest", "idx", name=op.f("pk_blob_chunks")),
    )


def downgrade() -> None:
    op.drop_table("blob_chunks")
    op.drop_table("blobs")
    op.drop_table("workspace_checkpoints")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("tracks_workspace")
