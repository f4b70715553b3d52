"""Replicas: the leadership row that elects and fences the serving replica.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21

Several control-plane replicas on one PostgreSQL database elect one leader with an advisory
lock; the leader records its epoch and address here (store/_election.py). SQLite databases get
the table too, unused, so both engines have one schema.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leadership",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("replica_id", sa.String(256), nullable=False),
        sa.Column("address", sa.String(512), nullable=False),
        sa.Column("elected_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leadership")),
    )


def downgrade() -> None:
    op.drop_table("leadership")
