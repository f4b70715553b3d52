"""Snapshots and resume: what a worker uploads of its runtime, and what a resuming worker reads.

Owns the waiters of CreateSnapshot calls (by request id) until the holder's upload commits. A
snapshot is stored only from the lease holder at its epoch and never claims a seq past the
committed log. A snapshot from the worker a restore granted the session to confirms the
restore (Restores).

A snapshot may send only the history after an earlier stored snapshot's (its base): the stored
history is the base's followed by what it sent, so it is whole again, and every reader (Resume,
GetSnapshot, export, forks) sees whole snapshots only. Protobuf's encoding of a repeated field
concatenates, so the merge is a byte concatenation, with no item decoded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import errors
from ._shared import Committer
from .messages import ResumeSource, SnapshotRequestMsg, Timings
from .model import Checkpoint, Snapshot, new_id, now_us
from .ports import Changes, SessionReader

#: The most history items one snapshot holds (its base's and its own).
MAX_SNAPSHOT_ITEMS = 200_000

if TYPE_CHECKING:
    from ._leases import Leases
    from ._log import EventLog
    from ._restore import Restores
    from ._sessions import SessionCache
    from ._workers import Workers


class Snapshots:
    def __init__(self, reader: SessionReader, committer: Committer, timings: Timings) -> None:
        self._reader = reader
        self._committer = committer
        self._timings = timings
        self._waiters: dict[str, tuple[str, asyncio.Future[Snapshot]]] = {}  # by request id

    def connect(
        self, *, sessions: SessionCache, leases: Leases, events: EventLog, workers: Workers, restores: Restores
    ) -> None:
        self._sessions = sessions
        self._leases = leases
        self._events = events
        self._workers = workers
        self._restores = restores

    async def latest(self, owner: str, session_id: str) -> Snapshot:
        await self._sessions.require(session_id, owner)
        snap = await self._reader.latest_snapshot(session_id)
        if snap is None:
            raise errors.SnapshotNotFound(
                f"session {session_id!r} has no snapshot yet; CreateSnapshot makes one",
                session_id=session_id,
            )
        return snap

    async def request(self, owner: str, session_id: str) -> Snapshot:
        """Ask the holder for a snapshot now and wait until its upload is stored."""
        rec = await self._sessions.require(session_id, owner)
        holder = self._leases.holder(rec)
        w = self._workers.get(holder) if holder else None
        if w is None or not w.connected:
            raise errors.NoWorker(
                f"no connected worker holds session {session_id!r}'s runtime; send input to "
                "start it on a worker, or read the latest snapshot with GetSnapshot",
                session_id=session_id,
            )
        request_id = new_id("req")
        fut: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = (session_id, fut)
        w.push(SnapshotRequestMsg(session_id, self._leases.epoch(rec), request_id))
        timeout = self._timings.snapshot_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise errors.Timeout(
                f"worker {w.info.worker_id!r} did not upload a snapshot within {timeout:g}s",
                worker_id=w.info.worker_id,
            ) from None
        finally:
            self._waiters.pop(request_id, None)

    async def store(
        self,
        worker_id: str,
        session_id: str,
        epoch: int,
        seq: int,
        metadata_json: str,
        history: bytes,
        history_count: int,
        request_id: str,
        owner: str,
        checkpoint: Checkpoint | None = None,
        base_snapshot_id: str = "",
    ) -> Snapshot:
        """Store the holder's snapshot. With `base_snapshot_id`, `history` holds only the items
        after that stored snapshot's history."""
        rec = await self._leases.load_and_check(worker_id, session_id, epoch, owner)
        committed = self._events.committed_seq(rec)
        if seq > committed:
            raise errors.InvalidArgument("seq", f"the snapshot claims seq {seq} but the log ends at {committed}")
        if base_snapshot_id:
            history, history_count = await self._on_base(session_id, seq, base_snapshot_id, history, history_count)
        snap = Snapshot(
            snapshot_id=new_id("snp"),
            session_id=session_id,
            seq=seq,
            worker_id=worker_id,
            lease_epoch=epoch,
            runtime=rec.session.runtime,
            runtime_metadata_json=metadata_json or "{}",
            history=history,
            history_count=history_count,
            create_time_us=now_us(),
        )
        changes = Changes(snapshot_inserts=[snap], snapshot_prunes=[session_id])
        if checkpoint is not None:
            changes.checkpoint_inserts.append(checkpoint)
        # A rehydrated runtime has a new thread id; the session id never changes.
        self._sessions.adopt_thread_id(rec, _runtime_thread_id(metadata_json), snap.create_time_us, changes)
        sid, waiter = self._waiters.get(request_id, ("", None)) if request_id else ("", None)
        if waiter is not None and sid == session_id:
            changes.on_commit.append(_resolver(waiter, snap))
        confirm = self._restores.confirmation(rec, worker_id, epoch)
        if confirm is not None:
            changes.on_commit.append(confirm)
        await self._committer.commit(changes)
        return snap

    async def _on_base(
        self, session_id: str, seq: int, base_snapshot_id: str, history: bytes, history_count: int
    ) -> tuple[bytes, int]:
        """The whole history: the base snapshot's, then the items sent after it."""
        base = await self._reader.get_snapshot(session_id, base_snapshot_id)
        if base is None or base.seq > seq:
            why = "is not a stored snapshot of the session" if base is None else f"covers seq {base.seq}, past {seq}"
            raise errors.SnapshotBaseUnknown(
                f"base snapshot {base_snapshot_id!r} {why}; send the whole history",
                session_id=session_id,
                snapshot_id=base_snapshot_id,
            )
        total = base.history_count + history_count
        if total > MAX_SNAPSHOT_ITEMS:
            raise errors.InvalidArgument(
                "history", f"at most {MAX_SNAPSHOT_ITEMS} items per snapshot; with its base this one has {total}"
            )
        return base.history + history, total

    async def resume_source(self, worker_id: str, session_id: str, epoch: int, owner: str) -> ResumeSource:
        """What a resuming worker reads: the latest snapshot, the inputs at or before its
        watermark of turns it does not cover yet, and the log end to read up to after it."""
        rec = await self._leases.load_and_check(worker_id, session_id, epoch, owner)
        upto = self._events.committed_seq(rec)
        snap = await self._reader.latest_snapshot(session_id)
        carried = await self._reader.inputs_open_at(session_id, snap.seq) if snap is not None else []
        checkpoint = await self._reader.current_checkpoint(session_id)
        return ResumeSource(snap, carried, upto, checkpoint, rec.session.tracks_workspace)


def _resolver(waiter: asyncio.Future[Snapshot], snap: Snapshot) -> Callable[[], None]:
    def resolve() -> None:
        if not waiter.done():
            waiter.set_result(snap)

    return resolve


def _runtime_thread_id(metadata_json: str) -> str:
    try:
        metadata = json.loads(metadata_json or "{}")
    except ValueError:
        return ""
    value = metadata.get("runtime_thread_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and len(value) <= 256 else ""
