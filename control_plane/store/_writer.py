"""Group commit: every durable change goes through one writer task.

On SQLite the transaction runs on one dedicated thread through SQLAlchemy's synchronous
engine: one thread hop per transaction instead of one per DBAPI call (aiosqlite hops for the
cursor, each execute and each close), which is most of a small commit's cost. On other
databases the same statements run through the async engine (`run_sync`).

Handlers submit `Changes` (mapped to a `WriteSet` of rows at once) and await them. The writer drains whatever has queued
while the previous commit ran, merges it into one transaction (one executemany per statement,
in a fixed dependency order), commits once, then runs each set's `on_commit` callbacks in
queue order. Per-row commits through the async bridge cap out near 1k rows/s on this machine;
merged commits reach tens of thousands, and a lone request pays no extra wait.

Because commits happen in queue order, a write queued later is never durable before one queued
earlier: the session log and fan-out can rely on that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ..domain.model import Event
from ..domain.ports import Changes, WriteFailed
from ._rows import WRITE_SET_FIELDS, WriteSet, rows_of
from ._schema import (
    CheckpointRow,
    EventRow,
    LeaseRow,
    RequestRow,
    SessionRow,
    SnapshotRow,
    TurnRow,
    WorkerRow,
    table_of,
)

log = logging.getLogger(__name__)

_sessions = table_of(SessionRow)
_turns = table_of(TurnRow)
_events = table_of(EventRow)
_leases = table_of(LeaseRow)
_snapshots = table_of(SnapshotRow)
_workers = table_of(WorkerRow)
_requests = table_of(RequestRow)
_checkpoints = table_of(CheckpointRow)


# Parents before children, inserts before the updates that may touch the same rows; deletes
# run after all of these (see _apply).
_WRITE_ORDER = [f for f in WRITE_SET_FIELDS if f not in ("session_deletes", "event_compactions")]
_SQLITE_EVENT_INSERT = (
    "INSERT INTO events (session_id, seq, turn_id, kind, body, lease_epoch, worker_seq, create_time_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


# Snapshots kept per session: the newest is what Resume uses; two older ones are a margin.
SNAPSHOTS_KEPT = 3


class Writer:
    """The domain's `GroupCommitWriter` port: one task commits every change, in queue order."""

    def __init__(self, engine: AsyncEngine, sync_engine: Engine | None = None) -> None:
        """`sync_engine`, when given, runs every transaction on one dedicated thread."""
        self._engine = engine
        self._sync_engine = sync_engine
        self._thread = (
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tether-writer")
            if sync_engine is not None
            else None
        )
        self._queue: asyncio.Queue[tuple[WriteSet, asyncio.Future[None]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._statements = self._build_statements(engine.dialect.name)
        # Called after a failed transaction, before its waiters hear of it, so the owner of
        # in-memory state can rebuild it from what is durable.
        self.on_failure: Callable[[], None] | None = None
        # Run first in every transaction; raising rolls it back. A replica's leadership fence
        # (store/_election.py) goes here, so a deposed leader can never commit.
        self.fence: Callable[[Connection], None] | None = None
        # Told of every transaction once it ends: (seconds it took, write sets it held, committed).
        self.on_transaction: Callable[[float, int, bool], None] | None = None
        self.transactions = 0
        self.write_sets = 0

    def _build_statements(self, dialect: str) -> dict[str, Any]:
        upsert: Callable[[Table], Any]
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        lease_up = upsert(_leases)
        lease_up = lease_up.on_conflict_do_update(
            index_elements=[_leases.c.session_id],
            set_={c: lease_up.excluded[c] for c in ("worker_id", "epoch", "granted_at_us")},
        )
        worker_up = upsert(_workers)
        worker_up = worker_up.on_conflict_do_update(
            index_elements=[_workers.c.worker_id],
            set_={c.name: worker_up.excluded[c.name] for c in _workers.c if c.name != "worker_id"},
        )
        checkpoint_up = upsert(_checkpoints)
        checkpoint_up = checkpoint_up.on_conflict_do_update(
            index_elements=[_checkpoints.c.session_id, _checkpoints.c.seq],
            set_={
                c.name: checkpoint_up.excluded[c.name] for c in _checkpoints.c if c.name not in ("session_id", "seq")
            },
        )
        newest = (
            select(_snapshots.c.snapshot_id)
            .where(_snapshots.c.session_id == bindparam("sid"))
            .order_by(_snapshots.c.seq.desc(), _snapshots.c.create_time_us.desc())
            .limit(SNAPSHOTS_KEPT)
        )
        return {
            "snapshot_prunes": delete(_snapshots).where(
                _snapshots.c.session_id == bindparam("sid"), _snapshots.c.snapshot_id.not_in(newest)
            ),
            "session_inserts": insert(_sessions),
            "turn_inserts": insert(_turns),
            "event_inserts": insert(_events),
            "snapshot_inserts": insert(_snapshots),
            "checkpoint_inserts": checkpoint_up,  # a second snapshot at one seq replaces it
            "worker_upserts": worker_up,
            "lease_upserts": lease_up,
            "session_updates": update(_sessions).where(_sessions.c.session_id == bindparam("b_session_id")),
            "turn_updates": update(_turns).where(_turns.c.turn_id == bindparam("b_turn_id")),
            "request_inserts": insert(_requests),
            "request_updates": update(_requests).where(_requests.c.request_id == bindparam("b_request_id")),
        }

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tether-writer")

    async def stop(self) -> None:
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        log.info("writer stopped after %d transactions holding %d write sets", self.transactions, self.write_sets)

    def submit(self, changes: Changes | WriteSet) -> asyncio.Future[None]:
        """Queue domain `changes` (mapped to rows now, as the records are) or rows already
        mapped; the future resolves once they are durable and their callbacks ran."""
        ws = rows_of(changes) if isinstance(changes, Changes) else changes
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((ws, fut))
        return fut

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            while not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            await self._commit(batch)

    def _transaction(self, merged: WriteSet) -> None:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            self._apply(conn, merged)

    def _apply(self, conn: Connection, merged: WriteSet) -> None:
        if self.fence is not None:
            self.fence(conn)
        for name in _WRITE_ORDER:
            rows = getattr(merged, name)
            if not rows:
                continue
            if name == "event_inserts":
                self._insert_events(conn, rows)
            elif name == "snapshot_prunes":
                for session_id in dict.fromkeys(rows):
                    conn.execute(self._statements[name], {"sid": session_id})
            else:
                conn.execute(self._statements[name], rows)
        for session_id, upto in merged.event_compactions:
            conn.execute(delete(_events).where(and_(_events.c.session_id == session_id, _events.c.seq <= upto)))
        if merged.session_deletes:
            ids = merged.session_deletes
            for table in (_events, _snapshots, _checkpoints, _leases, _requests, _turns, _sessions):
                conn.execute(delete(table).where(table.c.session_id.in_(ids)))

    def _insert_events(self, conn: Connection, events: list[Event]) -> None:
        if self._sync_engine is not None:
            # SQLite: plain tuples straight to the driver. Core's per-row parameter processing
            # cost more than SQLite's own insert at tens of thousands of events a second.
            conn.exec_driver_sql(
                _SQLITE_EVENT_INSERT,
                [
                    (e.session_id, e.seq, e.turn_id, e.kind, e.body, e.lease_epoch, e.worker_seq, e.create_time_us)
                    for e in events
                ],
            )
            return
        conn.execute(
            self._statements["event_inserts"],
            [
                {
                    "session_id": e.session_id,
                    "seq": e.seq,
                    "turn_id": e.turn_id,
                    "kind": e.kind,
                    "body": e.body,
                    "lease_epoch": e.lease_epoch,
                    "worker_seq": e.worker_seq,
                    "create_time_us": e.create_time_us,
                }
                for e in events
            ],
        )

    async def _commit(self, batch: list[tuple[WriteSet, asyncio.Future[None]]]) -> None:
        self.transactions += 1
        self.write_sets += len(batch)
        merged = WriteSet()
        for ws, _ in batch:
            merged.merge(ws)
        started = time.perf_counter()
        try:
            if self._thread is not None:
                await asyncio.get_running_loop().run_in_executor(self._thread, self._transaction, merged)
            else:
                async with self._engine.begin() as conn:
                    await conn.run_sync(self._apply, merged)
        except Exception as exc:  # the whole transaction rolled back: fail every waiter
            if self.on_transaction is not None:
                self.on_transaction(time.perf_counter() - started, len(batch), False)
            log.exception("write transaction failed; %d write sets rolled back", len(batch))
            if self.on_failure is not None:
                self.on_failure()
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(WriteFailed(str(exc)))
            return
        if self.on_transaction is not None:
            self.on_transaction(time.perf_counter() - started, len(batch), True)
        for ws, fut in batch:
            for callback in ws.on_commit:
                try:
                    callback()
                except Exception:  # a callback bug must not strand the other waiters
                    log.exception("on_commit callback failed")
            if not fut.done():
                fut.set_result(None)
