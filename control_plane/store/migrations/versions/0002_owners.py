"""Owners: every session and worker belongs to one; API keys, worker tokens and pairing codes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 (commit 6a4bd49)

Sessions and workers that exist already get the owner named at upgrade time
(`tether db upgrade --legacy-owner NAME`, default `local`, the owner `--dev` acts as), passed in
`config.attributes["legacy_owner"]`; how many rows got it is left in
`config.attributes["legacy_owner_rows"]` for the command to print.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OWNED = ("sessions", "workers")


def upgrade() -> None:
    owner = context.config.attributes.get("legacy_owner")
    if not owner:
        raise RuntimeError(
            "revision 0002 gives existing sessions and workers an owner, and none was named: "
            "run it with `tether db upgrade --legacy-owner NAME`"
        )
    filled = {}
    for table in _OWNED:
        # Added as NULL, filled, then made NOT NULL: the models have no server default to keep.
        op.add_column(table, sa.Column("owner_id", sa.String(256), nullable=True))
        update = sa.table(table, sa.column("owner_id")).update().values(owner_id=owner)
        filled[table] = op.get_bind().execute(update).rowcount
        with op.batch_alter_table(table) as batch:
            batch.alter_column("owner_id", existing_type=sa.String(256), nullable=False)
    context.config.attributes["legacy_owner_rows"] = filled
    op.create_index("ix_sessions_owner_session", "sessions", ["owner_id", "session_id"])

    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner_id", sa.String(256), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.Column("revoke_time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    op.create_table(
        "worker_tokens",
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.String(256), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.Column("revoke_time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_worker_tokens")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_worker_tokens_secret_hash")),
        sa.UniqueConstraint("worker_id", name=op.f("uq_worker_tokens_worker_id")),
    )
    op.create_index("ix_worker_tokens_owner", "worker_tokens", ["owner_id", "create_time_us"])
    op.create_table(
        "pairing_codes",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.String(256), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.Column("expire_time_us", sa.BigInteger(), nullable=False),
        sa.Column("consumed_time_us", sa.BigInteger(), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_pairing_codes")),
    )
    op.create_index("ix_pairing_codes_owner", "pairing_codes", ["owner_id", "expire_time_us"])


def downgrade() -> None:
    for table in ("pairing_codes", "worker_tokens", "api_keys"):
        op.drop_table(table)
    op.drop_index("ix_sessions_owner_session", table_name="sessions")
    for table in _OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner_id")
