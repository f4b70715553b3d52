"""Forks: a session records the session and turn it was copied from (ForkSession).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Existing sessions were created new, so both columns start empty for them (a server default,
which also keeps the upgrade a plain ADD COLUMN on both engines).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("forked_from_session_id", "forked_from_turn_id")


def upgrade() -> None:
    for name in _COLUMNS:
        op.add_column("sessions", sa.Column(name, sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
