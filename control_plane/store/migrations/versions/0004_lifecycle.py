"""Session lifecycle: what a fork was copied from, and which turns a revert took back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

- `sessions.forked_from_session_id`, `sessions.forked_from_turn_id` (ForkSession): empty for
  the sessions that exist, which were created new;
- `turns.reverted` (RevertSession): false for the turns that exist;
- `sessions.title`: the first input's first line, as a new session gets it with its first turn;
- `sessions.delete_time_us` (a scheduled deletion; 0: none) and its index, for the sweeper;
- `turns.output_schema`, `turns.result_json` (typed results): empty for the turns that exist;
- `sessions.compacted_seq` (event compaction by retention): 0, nothing compacted yet;
- the turn list's summary (ListTurns) `turns.start_time_us`, `first_seq`, `last_seq`, `usage`
  and `final_message`: read back from each turn's events (its first and terminal event, its
  turn_started, its last token_usage and its last agent message), one pass over the events.
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
    ("sessions", "title", sa.String(256), ""),
    ("sessions", "delete_time_us", sa.BigInteger(), 0),
    ("sessions", "compacted_seq", sa.BigInteger(), 0),
    ("turns", "start_time_us", sa.BigInteger(), 0),
    ("turns", "first_seq", sa.BigInteger(), 0),
    ("turns", "last_seq", sa.BigInteger(), 0),
    ("turns", "usage", sa.LargeBinary(), b""),
    ("turns", "final_message", sa.Text(), ""),
    ("turns", "output_schema", sa.Text(), ""),
    ("turns", "result_json", sa.Text(), ""),
)
_ENDED = 4  # TurnState.COMPLETED: states from here on have ended
_BATCH = 1000


def upgrade() -> None:
    # Added as NULL, filled, then made NOT NULL: the models have no server default to keep.
    for table, name, kind, value in _COLUMNS:
        op.add_column(table, sa.Column(name, kind, nullable=True))
        op.get_bind().execute(sa.table(table, sa.column(name)).update().values({name: value}))
    for table in dict.fromkeys(t for t, *_ in _COLUMNS):
        with op.batch_alter_table(table) as batch:
            for _, name, kind, _ in (c for c in _COLUMNS if c[0] == table):
                batch.alter_column(name, existing_type=kind, nullable=False)
    op.create_index("ix_sessions_delete_time", "sessions", ["delete_time_us"])
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    # The event bodies are the contract's EventBody encoding; only this one-off pass reads
    # inside them (the store never does).
    from tether.v1 import resources_pb2 as pb

    from tether.control_plane.domain.model import default_title

    turns = sa.table(
        "turns",
        *(sa.column(n) for n in ("turn_id", "session_id", "ordinal", "input", "state")),
        *(sa.column(n) for n in ("start_time_us", "first_seq", "last_seq", "usage", "final_message")),
    )
    sessions = sa.table("sessions", sa.column("session_id"), sa.column("title"))
    events = sa.table(
        "events", *(sa.column(n) for n in ("session_id", "seq", "turn_id", "kind", "body", "create_time_us"))
    )
    summary: dict[str, dict[str, object]] = {}
    ended = {r.turn_id for r in conn.execute(sa.select(turns.c.turn_id).where(turns.c.state >= _ENDED))}
    spans = conn.execute(
        sa.select(events.c.turn_id, sa.func.min(events.c.seq), sa.func.max(events.c.seq)).group_by(
            events.c.session_id, events.c.turn_id
        )
    )
    for turn_id, first, last in spans:
        summary[turn_id] = {"first_seq": first, "last_seq": last if turn_id in ended else 0}
    wanted = ("turn_started", "token_usage", "item_completed")
    after: tuple[str, int] = ("", 0)
    while True:  # in pages by (session, seq): the bodies never sit in memory all at once
        page = conn.execute(
            sa.select(events.c.session_id, events.c.seq, events.c.turn_id, events.c.kind, events.c.body, events.c.create_time_us)
            .where(events.c.kind.in_(wanted))
            .where(sa.tuple_(events.c.session_id, events.c.seq) > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
            .order_by(events.c.session_id, events.c.seq)
            .limit(_BATCH)
        ).all()
        for _, _, turn_id, kind, body, at in page:
            found = summary.setdefault(turn_id, {})
            if kind == "turn_started":
                found.setdefault("start_time_us", at)
            elif kind == "token_usage":
                found["usage"] = bytes(body)
            else:
                item = pb.EventBody.FromString(body).item_completed.item
                if item.kind == pb.ITEM_KIND_AGENT_MESSAGE:
                    found["final_message"] = item.text
        if len(page) < _BATCH:
            break
        after = (page[-1].session_id, page[-1].seq)
    update = (
        turns.update()
        .where(turns.c.turn_id == sa.bindparam("b_turn_id"))
        .values({n: sa.bindparam(n) for n in ("start_time_us", "first_seq", "last_seq", "usage", "final_message")})
    )
    defaults = {"start_time_us": 0, "first_seq": 0, "last_seq": 0, "usage": b"", "final_message": ""}
    params = [{**defaults, **found, "b_turn_id": turn_id} for turn_id, found in summary.items()]
    for i in range(0, len(params), _BATCH):
        conn.execute(update, params[i : i + _BATCH])
    firsts = conn.execute(sa.select(turns.c.session_id, turns.c.input).where(turns.c.ordinal == 1)).all()
    titled = [{"b_session_id": sid, "title": default_title(text)} for sid, text in firsts]
    retitle = sessions.update().where(sessions.c.session_id == sa.bindparam("b_session_id"))
    for i in range(0, len(titled), _BATCH):
        conn.execute(retitle.values(title=sa.bindparam("title")), titled[i : i + _BATCH])


def downgrade() -> None:
    op.drop_index("ix_sessions_delete_time", "sessions")
    for table in dict.fromkeys(t for t, *_ in reversed(_COLUMNS)):
        with op.batch_alter_table(table) as batch:
            for _, name, _, _ in (c for c in reversed(_COLUMNS) if c[0] == table):
                batch.drop_column(name)
