"""Session lifecycle: what a fork was copied from, and which turns a revert took back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

- `sessions.forked_from_session_id`, `sessions.forked_from_turn_id` (ForkSession): empty for
  the sessions that exist, which were created new;
- `turns.reverted` (RevertSession): false for the turns that exist.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# (table, column, type, value for the rows that exist)
_COLUMNS = (
    ("sessions", "forked_from_session_id", sa.String(64), ""),
    ("sessions", "forked_from_turn_id", sa.String(64), ""),
    ("turns", "reverted", sa.Boolean(), False),
)


def upgrade() -> None:
    # Added as NULL, filled, then made NOT NULL: the models have no server default to keep.
    for table, name, kind, value in _COLUMNS:
        op.add_column(table, sa.Column(name, kind, nullable=True))
        op.get_bind().execute(sa.table(table, sa.column(name)).update().values({name: value}))
    for table in dict.fromkeys(t for t, *_ in _COLUMNS):
        with op.batch_alter_table(table) as batch:
            for _, name, kind, _ in (c for c in _COLUMNS if c[0] == table):
                batch.alter_column(name, existing_type=kind, nullable=False)


def downgrade() -> None:
    for table in dict.fromkeys(t for t, *_ in reversed(_COLUMNS)):
        with op.batch_alter_table(table) as batch:
            for _, name, _, _ in (c for c in reversed(_COLUMNS) if c[0] == table):
                batch.drop_column(name)
