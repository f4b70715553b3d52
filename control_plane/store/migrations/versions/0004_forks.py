"""Forks: a session records the session and turn it was copied from (ForkSession).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Existing sessions were created new, so both columns are empty for them.
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
    # Added as NULL, filled, then made NOT NULL: the models have no server default to keep.
    sessions = sa.table("sessions", *(sa.column(name) for name in _COLUMNS))
    for name in _COLUMNS:
        op.add_column("sessions", sa.Column(name, sa.String(64), nullable=True))
    op.get_bind().execute(sessions.update().values(**dict.fromkeys(_COLUMNS, "")))
    with op.batch_alter_table("sessions") as batch:
        for name in _COLUMNS:
            batch.alter_column(name, existing_type=sa.String(64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
