"""Queries: rows in, domain records out. Nothing above `store/` sees a row."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, bindparam, case, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..domain.model import (
    TERMINAL_KINDS,
    Checkpoint,
    Event,
    Lease,
    PendingRequest,
    RequestState,
    Snapshot,
    Turn,
    TurnState,
)
from ..domain.ports import ListedSession, LoadedSession, SessionQuery
from ._rows import checkpoint_from_row, request_from_row, session_from_row, snapshot_from_row, turn_from_row
from ._schema import CheckpointRow, EventRow, LeaseRow, RequestRow, SessionRow, SnapshotRow, TurnRow
from ._whole import reads_run_to_the_end

_ENDED = TurnState.COMPLETED  # states >= this have ended


# The hottest read (replays and Resume): plain SQL, so rows skip Core's per-column result
# processing, which cost more than SQLite itself at thousands of rows (87 ms against 37 ms for
# 20,000 events here).
_EVENTS_AFTER = text(
    "SELECT seq, turn_id, kind, body, create_time_us, lease_epoch FROM events "
    "WHERE session_id = :sid AND seq > :after ORDER BY seq LIMIT :n"
)

_KINDS_BEFORE = text(
    "SELECT seq, turn_id, kind FROM events WHERE session_id = :sid AND seq < :before ORDER BY seq DESC LIMIT :n"
)
_EVENTS_AT = text(
    "SELECT seq, turn_id, kind, body, create_time_us, lease_epoch FROM events "
    "WHERE session_id = :sid AND seq IN :seqs ORDER BY seq"
).bindparams(bindparam("seqs", expanding=True))
_TERMINAL = frozenset(TERMINAL_KINDS)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@reads_run_to_the_end
class Reader:
    """The domain's `SessionReader` port on SQLAlchemy."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load_session(self, session_id: str) -> LoadedSession | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(SessionRow.__table__).where(SessionRow.session_id == session_id))).first()
            if row is None:
                return None
            last = (
                await conn.execute(
                    select(EventRow.seq, EventRow.create_time_us)
                    .where(EventRow.session_id == session_id)
                    .order_by(EventRow.seq.desc())
                    .limit(1)
                )
            ).first()
            last_seq, last_event_us = (last.seq, last.create_time_us) if last else (0, 0)
            turn_count = (
                await conn.execute(
                    select(func.coalesce(func.max(TurnRow.ordinal), 0)).where(TurnRow.session_id == session_id)
                )
            ).scalar_one()
            lease_row = (
                await conn.execute(select(LeaseRow.__table__).where(LeaseRow.session_id == session_id))
            ).first()
            turns = (
                await conn.execute(
                    select(TurnRow.__table__)
                    .where(and_(TurnRow.session_id == session_id, TurnRow.state < int(_ENDED)))
                    .order_by(TurnRow.ordinal)
                )
            ).all()
            lease = None
            last_worker_seq = 0
            if lease_row is not None:
                lease = Lease(session_id, lease_row.worker_id, lease_row.epoch, lease_row.granted_at_us)
                last_worker_seq = (
                    await conn.execute(
                        select(func.coalesce(func.max(EventRow.worker_seq), 0)).where(
                            and_(EventRow.session_id == session_id, EventRow.lease_epoch == lease.epoch)
                        )
                    )
                ).scalar_one()
            open_ids = [t.turn_id for t in turns]
            requests = (
                (
                    await conn.execute(
                        select(RequestRow.__table__)
                        .where(and_(RequestRow.session_id == session_id, RequestRow.turn_id.in_(open_ids)))
                        .order_by(RequestRow.create_time_us)
                    )
                ).all()
                if open_ids
                else []
            )
        return LoadedSession(
            session_from_row(row, turn_count, last_event_us),
            last_seq,
            lease,
            [turn_from_row(t) for t in turns],
            last_worker_seq,
            [request_from_row(r) for r in requests],
            last_event_us,
        )

    async def list_sessions(self, query: SessionQuery) -> list[ListedSession]:
        """One owner's sessions that match `query`, in its order (see SessionQuery).

        Label filters are checked exactly here, after a LIKE on the stored JSON (sorted keys)
        narrows the rows in SQL; a page short of matches after that reads on, so a page is
        never short while more sessions match.
        """
        s = SessionRow.__table__
        open_turn = (
            select(TurnRow.turn_id)
            .where(and_(TurnRow.session_id == s.c.session_id, TurnRow.state < int(_ENDED)))
            .exists()
        )
        turn_count = (
            select(func.coalesce(func.max(TurnRow.ordinal), 0))
            .where(TurnRow.session_id == s.c.session_id)
            .scalar_subquery()
        )
        last_event_us = (
            select(EventRow.create_time_us)
            .where(EventRow.session_id == s.c.session_id)
            .order_by(EventRow.seq.desc())
            .limit(1)
            .scalar_subquery()
        )
        # The later of the last event and the creation (a fork's copied events are older).
        activity = case(
            (func.coalesce(last_event_us, 0) > s.c.create_time_us, func.coalesce(last_event_us, 0)),
            else_=s.c.create_time_us,
        )
        q = select(
            s,
            open_turn.label("has_open_turn"),
            turn_count.label("turn_count"),
            last_event_us.label("last_event_us"),
            activity.label("activity_us"),
        ).where(s.c.owner_id == query.owner)
        if query.archived is not None:
            q = q.where(s.c.archived == query.archived)
        if query.active is not None:
            q = q.where(open_turn if query.active else ~open_turn)
        if query.runtime:
            q = q.where(s.c.runtime == query.runtime)
        for key, value in query.labels:
            pair = json.dumps({key: value})[1:-1]  # '"k": "v"', as json.dumps(sort_keys=True) stores it
            q = q.where(s.c.labels_json.like(f"%{_escape_like(pair)}%", escape="\\"))
        desc = query.descending
        if query.by_activity:
            q = q.order_by(activity.desc() if desc else activity, s.c.session_id.desc() if desc else s.c.session_id)
        else:
            q = q.order_by(s.c.session_id.desc() if desc else s.c.session_id)
        wanted = dict(query.labels)
        after_id, after_us = query.after_id, query.after_activity_us
        found: list[ListedSession] = []
        async with self._engine.connect() as conn:
            while len(found) < query.limit:
                page = q
                if after_id:
                    id_after = s.c.session_id < after_id if desc else s.c.session_id > after_id
                    if query.by_activity:
                        beyond = activity < after_us if desc else activity > after_us
                        page = page.where(or_(beyond, and_(activity == after_us, id_after)))
                    else:
                        page = page.where(id_after)
                rows = (await conn.execute(page.limit(query.limit))).all()
                for r in rows:
                    session = session_from_row(r, r.turn_count, r.last_event_us)
                    if all(session.labels.get(k) == v for k, v in wanted.items()):
                        found.append(ListedSession(session, bool(r.has_open_turn), r.activity_us))
                if len(rows) < query.limit or not wanted:
                    break
                after_id, after_us = rows[-1].session_id, rows[-1].activity_us
        return found[: query.limit]

    async def get_turn(self, session_id: str, turn_id: str) -> Turn | None:
        return await self._one_turn(session_id, TurnRow.turn_id == turn_id)

    async def find_turn_by_key(self, session_id: str, key: str) -> Turn | None:
        return await self._one_turn(session_id, TurnRow.idempotency_key == key)

    async def _one_turn(self, session_id: str, condition: Any) -> Turn | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(TurnRow.__table__).where(and_(TurnRow.session_id == session_id, condition)))
            ).first()
        return turn_from_row(row) if row else None

    async def events_after(self, session_id: str, after_seq: int, limit: int) -> list[Event]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_EVENTS_AFTER, {"sid": session_id, "after": after_seq, "n": limit})).all()
        # Positional unpacking: a Row's attribute lookup by name costs ~2 us, times 6 columns.
        return [
            Event(session_id, seq, turn_id, kind, body, create_time_us, lease_epoch)
            for seq, turn_id, kind, body, create_time_us, lease_epoch in rows
        ]

    async def inputs_open_at(self, session_id: str, upto: int) -> list[Event]:
        """The input_received events at or before `upto` of turns that had not ended by then.

        A snapshot at watermark `upto` holds the history of the turns that ended by then, but
        the log up to it can also hold the input of a turn that was queued meanwhile; Resume
        must send that input too. A session's turns run one at a time, in order, so walking
        back from `upto` stops at the input of the last turn that ended.
        """
        found: list[int] = []
        last_ended: str | None = None
        before = upto + 1
        async with self._engine.connect() as conn:
            while True:
                rows = (await conn.execute(_KINDS_BEFORE, {"sid": session_id, "before": before, "n": 1000})).all()
                if not rows:
                    break
                for seq, turn_id, kind in rows:
                    if kind in _TERMINAL:
                        if last_ended is None:
                            last_ended = turn_id
                    elif kind == "input_received":
                        if turn_id == last_ended:
                            rows = []
                            break
                        found.append(seq)
                if not rows:
                    break
                before = rows[-1][0]
            if not found:
                return []
            rows = (await conn.execute(_EVENTS_AT, {"sid": session_id, "seqs": found})).all()
        return [
            Event(session_id, seq, turn_id, kind, body, create_time_us, lease_epoch)
            for seq, turn_id, kind, body, create_time_us, lease_epoch in rows
        ]

    async def latest_snapshot(self, session_id: str) -> Snapshot | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(SnapshotRow.__table__)
                    .where(SnapshotRow.session_id == session_id)
                    .order_by(SnapshotRow.seq.desc(), SnapshotRow.create_time_us.desc())
                    .limit(1)
                )
            ).first()
        return snapshot_from_row(row) if row else None

    async def get_snapshot(self, session_id: str, snapshot_id: str) -> Snapshot | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(SnapshotRow.__table__).where(
                        SnapshotRow.snapshot_id == snapshot_id, SnapshotRow.session_id == session_id
                    )
                )
            ).first()
        return snapshot_from_row(row) if row else None

    async def list_snapshots(self, session_id: str) -> list[Snapshot]:
        query = (
            select(SnapshotRow.__table__)
            .where(SnapshotRow.session_id == session_id)
            .order_by(SnapshotRow.seq, SnapshotRow.create_time_us)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [snapshot_from_row(r) for r in rows]

    async def current_checkpoint(self, session_id: str) -> Checkpoint | None:
        c = CheckpointRow.__table__
        t = TurnRow.__table__
        query = (
            select(c)
            .select_from(c.outerjoin(t, and_(t.c.turn_id == c.c.turn_id, t.c.session_id == c.c.session_id)))
            .where(and_(c.c.session_id == session_id, or_(t.c.reverted.is_(None), t.c.reverted.is_(False))))
            .order_by(c.c.seq.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return checkpoint_from_row(row) if row else None

    async def list_checkpoints(self, session_id: str) -> list[Checkpoint]:
        c = CheckpointRow.__table__
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(c).where(c.c.session_id == session_id).order_by(c.c.seq))).all()
        return [checkpoint_from_row(r) for r in rows]

    async def checkpoint_chunks_of(self, owner: str) -> set[str]:
        c = CheckpointRow.__table__
        s = SessionRow.__table__
        query = select(c.c.chunk_digests).join(s, s.c.session_id == c.c.session_id).where(s.c.owner_id == owner)
        chunks: set[str] = set()
        async with self._engine.connect() as conn:
            result = await conn.stream(query.execution_options(yield_per=500))
            async for row in result:
                chunks.update(d for d in row.chunk_digests.split(",") if d)
        return chunks

    async def turn_ended_upto(self, session_id: str, seq: int) -> str:
        t = TurnRow.__table__
        query = (
            select(t.c.turn_id)
            .where(and_(t.c.session_id == session_id, t.c.state >= int(_ENDED), t.c.last_seq > 0, t.c.last_seq <= seq))
            .order_by(t.c.last_seq.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return row.turn_id if row else ""

    async def sessions_due_for_deletion(self, now_us: int, limit: int) -> list[tuple[str, str]]:
        s = SessionRow.__table__
        query = (
            select(s.c.session_id, s.c.owner_id)
            .where(and_(s.c.delete_time_us > 0, s.c.delete_time_us <= now_us))
            .order_by(s.c.delete_time_us)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [(r.session_id, r.owner_id) for r in await conn.execute(query)]

    async def idle_sessions(
        self, cutoff_us: int, *, owner: str | None, exclude_owners: tuple[str, ...], include_archived: bool, limit: int
    ) -> list[tuple[str, str]]:
        s = SessionRow.__table__
        open_turn = (
            select(TurnRow.turn_id)
            .where(and_(TurnRow.session_id == s.c.session_id, TurnRow.state < int(_ENDED)))
            .exists()
        )
        last_event = func.coalesce(
            select(EventRow.create_time_us)
            .where(EventRow.session_id == s.c.session_id)
            .order_by(EventRow.seq.desc())
            .limit(1)
            .scalar_subquery(),
            0,
        )
        # Activity is the log's (or the creation): archiving or renaming a session is not using it.
        activity = case((last_event > s.c.create_time_us, last_event), else_=s.c.create_time_us)
        query = select(s.c.session_id, s.c.owner_id).where(and_(~open_turn, activity < cutoff_us))
        if owner is not None:
            query = query.where(s.c.owner_id == owner)
        elif exclude_owners:
            query = query.where(s.c.owner_id.not_in(exclude_owners))
        if not include_archived:
            query = query.where(s.c.archived.is_(False))
        async with self._engine.connect() as conn:
            rows = await conn.execute(query.order_by(activity).limit(limit))
            return [(r.session_id, r.owner_id) for r in rows]

    async def compaction_candidates(
        self, cutoff_us: int, *, owner: str | None, exclude_owners: tuple[str, ...], limit: int
    ) -> list[tuple[str, str]]:
        s, p, e = SessionRow.__table__, SnapshotRow.__table__, EventRow.__table__
        covered = select(p.c.snapshot_id).where(and_(p.c.session_id == s.c.session_id, p.c.seq > s.c.compacted_seq))
        # The log is gapless: its oldest kept event is at compacted_seq + 1 (a primary-key read).
        old = select(e.c.seq).where(
            and_(e.c.session_id == s.c.session_id, e.c.seq == s.c.compacted_seq + 1, e.c.create_time_us < cutoff_us)
        )
        query = select(s.c.session_id, s.c.owner_id).where(and_(covered.exists(), old.exists()))
        if owner is not None:
            query = query.where(s.c.owner_id == owner)
        elif exclude_owners:
            query = query.where(s.c.owner_id.not_in(exclude_owners))
        async with self._engine.connect() as conn:
            return [(r.session_id, r.owner_id) for r in await conn.execute(query.limit(limit))]

    async def compaction_facts(self, session_id: str, cutoff_us: int) -> tuple[int, int, int]:
        p, t, e = SnapshotRow.__table__, TurnRow.__table__, EventRow.__table__
        async with self._engine.connect() as conn:
            watermark = (
                await conn.execute(select(func.coalesce(func.max(p.c.seq), 0)).where(p.c.session_id == session_id))
            ).scalar_one()
            open_at = and_(
                t.c.session_id == session_id,
                or_(t.c.state < int(_ENDED), t.c.last_seq > watermark, t.c.last_seq == 0),
            )
            first = (await conn.execute(select(func.min(t.c.first_seq)).where(open_at))).scalar_one()
            if first == 0:  # a turn whose first event is not known: keep everything
                first = 1
            aged = (
                await conn.execute(
                    select(func.coalesce(func.max(e.c.seq), 0)).where(
                        and_(e.c.session_id == session_id, e.c.seq <= watermark, e.c.create_time_us < cutoff_us)
                    )
                )
            ).scalar_one()
        return watermark, first or 0, aged

    async def session_ids_of(self, owner: str, limit: int) -> list[str]:
        s = SessionRow.__table__
        query = select(s.c.session_id).where(s.c.owner_id == owner).order_by(s.c.session_id).limit(limit)
        async with self._engine.connect() as conn:
            return [r.session_id for r in await conn.execute(query)]

    async def ids_taken(self, session_id: str, turn_ids: list[str]) -> list[str]:
        async with self._engine.connect() as conn:
            taken = [
                r.session_id
                for r in await conn.execute(select(SessionRow.session_id).where(SessionRow.session_id == session_id))
            ]
            for i in range(0, len(turn_ids), 500):
                chunk = turn_ids[i : i + 500]
                taken += [
                    r.turn_id for r in await conn.execute(select(TurnRow.turn_id).where(TurnRow.turn_id.in_(chunk)))
                ]
        return taken

    async def list_turns(self, session_id: str, limit: int, after_ordinal: int, descending: bool) -> list[Turn]:
        t = TurnRow.__table__
        query = select(t).where(t.c.session_id == session_id)
        if after_ordinal:
            query = query.where(t.c.ordinal < after_ordinal if descending else t.c.ordinal > after_ordinal)
        query = query.order_by(t.c.ordinal.desc() if descending else t.c.ordinal).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [turn_from_row(r) for r in rows]

    async def turns_upto(self, session_id: str, ordinal: int) -> list[Turn]:
        query = (
            select(TurnRow.__table__)
            .where(and_(TurnRow.session_id == session_id, TurnRow.ordinal <= ordinal))
            .order_by(TurnRow.ordinal)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [turn_from_row(r) for r in rows]

    async def turns_after(self, session_id: str, ordinal: int) -> list[Turn]:
        query = (
            select(TurnRow.__table__)
            .where(and_(TurnRow.session_id == session_id, TurnRow.ordinal > ordinal))
            .order_by(TurnRow.ordinal)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [turn_from_row(r) for r in rows]

    async def last_completed_turn(self, session_id: str) -> Turn | None:
        query = (
            select(TurnRow.__table__)
            .where(and_(TurnRow.session_id == session_id, TurnRow.state == int(TurnState.COMPLETED)))
            .order_by(TurnRow.ordinal.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return turn_from_row(row) if row else None

    async def get_request(self, session_id: str, request_id: str) -> PendingRequest | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(RequestRow.__table__).where(
                        and_(RequestRow.session_id == session_id, RequestRow.request_id == request_id)
                    )
                )
            ).first()
        return request_from_row(row) if row else None

    async def list_requests(self, session_id: str, state: RequestState | None) -> list[PendingRequest]:
        query = select(RequestRow.__table__).where(RequestRow.session_id == session_id)
        if state is not None:
            query = query.where(RequestRow.state == int(state))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.order_by(RequestRow.create_time_us, RequestRow.request_id))).all()
        return [request_from_row(r) for r in rows]

    async def sessions_with_open_turns(self) -> list[str]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(TurnRow.session_id).where(TurnRow.state < int(_ENDED)).distinct())).all()
        return [r.session_id for r in rows]
