"""The session cache and session CRUD.

Owns the records of the sessions this process has loaded (one `SessionRecord` each, see
`_record.py`) in least-recently-used order, the loads under way, the evictor, and each record's
`session`, `deleted` and `used_at` fields: only this part changes a Session (other parts ask it
to count a turn, touch the update time or adopt a runtime thread id).

Bounded memory: only live sessions stay loaded. A session is live while a turn of it is open,
a worker holds its lease, a subscriber follows its log (or a commit of it is under way), a
restore of it runs, or a request of it is pending; and for `Timings.session_idle_s` after it
was last asked for. The evictor drops the others, a few times per idle interval, walking only
the least recently used end of the cache; a dropped session is reloaded from the database when
next asked for, like after a restart. The other parts keep their own indexes of the live
sessions they scan (held leases by worker, busy sessions by owner, restores under way), so no
periodic or per-call scan walks every loaded session.

Owners: every session belongs to one. Every session call names the caller's owner and finds
only that owner's sessions: another owner's session does not exist, to the caller.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import TYPE_CHECKING

from . import errors
from ._record import SessionRecord
from ._shared import Committer, Tasks, log
from .messages import InterruptMsg, RevokeMsg, SessionView, Timings
from .model import Session, SessionState, default_title, new_id, now_us
from .ports import Changes, SessionQuery, SessionReader

if TYPE_CHECKING:
    from ._leases import Leases
    from ._log import EventLog
    from ._pending import PendingRequests
    from ._restore import Restores
    from ._scheduling import Scheduler
    from ._turns import Turns
    from ._workers import Workers


class SessionCache:
    def __init__(self, reader: SessionReader, committer: Committer, timings: Timings) -> None:
        self._reader = reader
        self._committer = committer
        self._timings = timings
        # Least recently used first: the evictor looks only at the front.
        self._records: collections.OrderedDict[str, SessionRecord] = collections.OrderedDict()
        self.evicted = 0  # records dropped by the evictor since start (for tests and operators)
        # Set when the hub stops: live subscriptions end UNAVAILABLE (a stop is not a deletion).
        self.stopping = False
        self._loading: dict[str, asyncio.Future[SessionRecord | None]] = {}
        # Sessions a bulk delete is removing: they do not load meanwhile.
        self._doomed: set[str] = set()

    def connect(
        self,
        *,
        turns: Turns,
        events: EventLog,
        leases: Leases,
        scheduler: Scheduler,
        restores: Restores,
        workers: Workers,
        requests: PendingRequests,
    ) -> None:
        self._turns = turns
        self._events = events
        self._leases = leases
        self._scheduler = scheduler
        self._restores = restores
        self._workers = workers
        self._requests = requests

    # ----------------------------------------------------------------- the cache

    def get(self, session_id: str) -> SessionRecord | None:
        """The loaded record, if any (deleted or not)."""
        rec = self._records.get(session_id)
        if rec is not None:
            self._used(rec)
        return rec

    def __len__(self) -> int:
        return len(self._records)

    async def load(self, session_id: str) -> SessionRecord | None:
        if session_id in self._doomed:
            return None
        rec = self._records.get(session_id)
        if rec is not None:
            self._used(rec)
            return rec
        pending = self._loading.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[SessionRecord | None] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = fut
        try:
            loaded = await self._reader.load_session(session_id)
            rec = None
            if loaded is not None and session_id not in self._doomed:
                # Loading gives every held lease a full TTL: workers get that long to renew.
                rec = SessionRecord.reloaded(loaded, self._timings.lease_ttl_s)
                self._keep(rec)
            fut.set_result(rec)
            return rec
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved; callers get it re-raised
            raise
        finally:
            del self._loading[session_id]

    async def require(self, session_id: str, owner: str) -> SessionRecord:
        """The owner's session; another owner's is as absent as one that never existed."""
        rec = await self.load(session_id)
        if rec is None or rec.deleted or rec.session.owner != owner:
            raise errors.SessionNotFound(session_id)
        return rec

    def _used(self, rec: SessionRecord) -> None:
        rec.used_at = time.monotonic()
        self._records.move_to_end(rec.session_id)

    def _keep(self, rec: SessionRecord) -> None:
        rec.used_at = time.monotonic()
        self._records[rec.session_id] = rec
        self._leases.loaded(rec)
        self._turns.loaded(rec)

    def _forget(self, session_id: str) -> None:
        rec = self._records.pop(session_id, None)
        if rec is not None:
            self._leases.forgotten(rec)
            self._turns.forgotten(rec)

    def stop(self) -> list[SessionRecord]:
        """The hub stops: from now on live subscriptions end as UNAVAILABLE (the sessions still
        exist; a client reconnects to the next control plane). Returns the loaded records."""
        self.stopping = True
        return list(self._records.values())

    def drop_all(self) -> list[SessionRecord]:
        """Mark every record deleted and forget them all (after a failed write); returns them."""
        dropped = list(self._records.values())
        for rec in dropped:
            rec.deleted = True
            self._forget(rec.session_id)
        return dropped

    # ----------------------------------------------------------------- eviction

    def live(self, rec: SessionRecord) -> bool:
        """Whether the session must stay loaded whatever its idle time (see the module doc)."""
        return (
            self._turns.has_open(rec)
            or bool(self._leases.holder(rec))
            or self._events.followed(rec)
            or self._restores.in_progress(rec)
            or self._requests.any_open(rec)
        )

    def evict_idle(self, now: float | None = None) -> int:
        """Drop the records unused for `session_idle_s` that are not live; returns how many.
        A live one counts as used now, so it is looked at again an idle interval later."""
        cutoff = (time.monotonic() if now is None else now) - self._timings.session_idle_s
        stale = []
        for rec in self._records.values():  # least recently used first
            if rec.used_at > cutoff:
                break
            stale.append(rec)
        evicted = 0
        for rec in stale:
            if rec.deleted or self._records.get(rec.session_id) is not rec:
                continue
            if self.live(rec):
                self._used(rec)
                continue
            self._forget(rec.session_id)
            evicted += 1
        self.evicted += evicted
        return evicted

    def start_evictor(self, tasks: Tasks) -> None:
        tasks.spawn(self._evict_forever(), "tether-session-evictor")

    async def _evict_forever(self) -> None:
        period = max(0.05, min(30.0, self._timings.session_idle_s / 4))
        while True:
            await asyncio.sleep(period)
            evicted = self.evict_idle()
            if evicted:
                log.debug("evicted %d idle sessions; %d stay loaded", evicted, len(self._records))

    # ----------------------------------------------------------------- changing a Session

    def count_turn(self, rec: SessionRecord, text: str, now: int, changes: Changes) -> int:
        """A new turn with input `text`: returns its ordinal. The first input names a session
        that has no title yet."""
        session = rec.session
        session.turn_count += 1
        session.update_time_us = now
        if session.turn_count == 1 and not session.title:
            session.title = default_title(text)
            changes.session_updates.append(session)
        return session.turn_count

    def touch(self, rec: SessionRecord, now: int, changes: Changes) -> None:
        rec.session.update_time_us = now
        changes.session_updates.append(rec.session)

    def adopt_thread_id(self, rec: SessionRecord, thread_id: str, now: int, changes: Changes) -> None:
        """The runtime reports its thread id (a rehydrated runtime has a new one)."""
        session = rec.session
        if thread_id and thread_id != session.runtime_thread_id:
            session.runtime_thread_id = thread_id
            session.update_time_us = now
            changes.session_updates.append(session)

    # ----------------------------------------------------------------- calls

    def view(self, rec: SessionRecord) -> SessionView:
        if rec.session.archived:
            state = SessionState.ARCHIVED
        else:
            state = SessionState.ACTIVE if self._turns.busy(rec) else SessionState.IDLE
        return SessionView(
            session=rec.session,
            state=state,
            last_seq=self._events.committed_seq(rec),
            active_turn_id=self._turns.current_turn_id(rec),
            worker_id=self._leases.holder(rec),
            lease_epoch=self._leases.epoch(rec),
            waiting_reason=self._turns.waiting_reason(rec),
            last_activity_us=max(rec.session.create_time_us, self._events.last_event_us(rec)),
        )

    async def create(
        self, owner: str, runtime: str, worker_selector: dict[str, str], labels: dict[str, str]
    ) -> SessionView:
        now = now_us()
        session = Session(new_id("ses"), runtime, dict(worker_selector), dict(labels), now, now, owner=owner)
        rec = SessionRecord.new(session)
        await self._committer.commit(Changes(session_inserts=[session]))
        self._keep(rec)
        return self.view(rec)

    async def insert_copy(self, session: Session, last_seq: int, changes: Changes) -> SessionView:
        """Store a session made from another one's log (its turns and events are in `changes`)
        in one transaction with them, then keep it loaded."""
        changes.session_inserts.insert(0, session)
        await self._committer.commit(changes)
        rec = SessionRecord.copied(session, last_seq)
        self._keep(rec)
        return self.view(rec)

    async def list_sessions(
        self, query: SessionQuery, state: SessionState | None
    ) -> tuple[list[SessionView], tuple[str, int] | None]:
        """One page of `query.owner`'s sessions in `state` (None: any) and, when more follow,
        where the next page starts after: the last one's id and the activity it sorted by."""
        if state == SessionState.ARCHIVED:
            if query.archived is False:
                return [], None
            query = dataclasses.replace(query, archived=True)
        elif state is not None:
            if query.archived:
                return [], None
            query = dataclasses.replace(query, archived=False, active=state == SessionState.ACTIVE)
        page_size = query.limit
        rows = await self._reader.list_sessions(dataclasses.replace(query, limit=page_size + 1))
        more = len(rows) > page_size
        views = []
        for session, has_open, activity_us in rows[:page_size]:
            rec = self._records.get(session.session_id)
            if rec is not None and not rec.deleted:
                view = self.view(rec)
                views.append(dataclasses.replace(view, last_activity_us=max(view.last_activity_us, activity_us)))
                continue
            st = SessionState.ARCHIVED if session.archived else (SessionState.ACTIVE if has_open else SessionState.IDLE)
            views.append(SessionView(session, st, 0, "", "", 0, last_activity_us=activity_us))
        # Sessions not in memory show last_seq 0 in a list; GetSession gives the full view.
        if not (more and views):
            return views, None
        last = rows[len(views) - 1]
        return views, (last.session.session_id, last.last_activity_us)

    async def update(
        self, owner: str, session_id: str, title: str | None, labels: dict[str, str] | None
    ) -> SessionView:
        """UpdateSession: the title or the labels (replaced whole), archived or not."""
        rec = await self.require(session_id, owner)
        session = rec.session
        if title is not None:
            session.title = title
        if labels is not None:
            session.labels = dict(labels)
        session.update_time_us = now_us()
        await self._committer.commit(Changes(session_updates=[session]))
        return self.view(rec)

    async def archive(self, owner: str, session_id: str) -> SessionView:
        rec = await self.require(session_id, owner)
        # An archived session is read-only, so a turn must not keep writing to it: refuse while
        # one is queued or running (interrupt it first, or wait for it to end).
        if not rec.session.archived and self._turns.busy(rec):
            raise errors.SessionBusy(
                f"session {session_id!r} has a turn queued or running ({self._turns.current_turn_id(rec)}); "
                "interrupt it or wait for it to end, then archive",
                session_id=session_id,
                turn_id=self._turns.current_turn_id(rec),
            )
        if not rec.session.archived:
            rec.session.archived = True
            rec.session.update_time_us = now_us()
            await self._committer.commit(Changes(session_updates=[rec.session]))
        return self.view(rec)

    async def unarchive(self, owner: str, session_id: str) -> SessionView:
        rec = await self.require(session_id, owner)
        if rec.session.archived:
            rec.session.archived = False
            rec.session.update_time_us = now_us()
            await self._committer.commit(Changes(session_updates=[rec.session]))
        return self.view(rec)

    async def delete(self, owner: str, session_id: str) -> None:
        rec = await self.require(session_id, owner)
        self._let_go(rec)
        try:
            await self._committer.commit(Changes(session_deletes=[session_id]))
        finally:
            self._forget(session_id)

    async def delete_many(self, session_ids: list[str]) -> None:
        """Delete these sessions in one transaction (PurgeOwnerData's batches): the loaded ones
        let go as `delete` does, the others kept from loading until they are gone."""
        doomed = [sid for sid in session_ids if sid not in self._doomed]
        self._doomed.update(doomed)
        try:
            for sid in doomed:
                rec = self._records.get(sid)
                if rec is not None and not rec.deleted:
                    self._let_go(rec)
            # A load already reading one of them keeps nothing now; let it finish first, so no
            # load can read rows from before the delete once it is committed.
            loading = [asyncio.shield(self._loading[sid]) for sid in doomed if sid in self._loading]
            await asyncio.gather(*loading, return_exceptions=True)
            await self._committer.commit(Changes(session_deletes=doomed))
        finally:
            for sid in doomed:
                self._forget(sid)
                self._doomed.discard(sid)

    def _let_go(self, rec: SessionRecord) -> None:
        """A session being deleted: nothing of it runs, waits or is held any more."""
        session_id = rec.session_id
        rec.deleted = True
        self._scheduler.forget(rec)
        self._restores.abandon(rec, errors.SessionNotFound(session_id))
        holder = self._workers.get(self._leases.holder(rec))
        if holder is not None:
            running = self._turns.running(rec)
            if running is not None:
                holder.push(InterruptMsg(session_id, running.turn_id, "session deleted"))
            holder.push(RevokeMsg(session_id, self._leases.epoch(rec), "session deleted"))
            holder.let_go(session_id)
        active = self._turns.active(rec)
        if active is not None:
            self._workers.free_everywhere(active.turn_id)
        self._events.wake(rec)

    async def compacted(self, rec: SessionRecord, upto: int) -> None:
        """Retention drops the session's events up to `upto` (covered by its snapshot)."""
        rec.session.compacted_seq = upto
        await self._committer.commit(Changes(event_compactions=[(rec.session_id, upto)], session_updates=[rec.session]))

    async def set_delete_time(self, owner: str, session_id: str, delete_time_us: int) -> SessionView:
        """Schedule the session's deletion at `delete_time_us` (0: cancel it), durably."""
        rec = await self.require(session_id, owner)
        if rec.session.delete_time_us != delete_time_us:
            rec.session.delete_time_us = delete_time_us
            rec.session.update_time_us = now_us()
            await self._committer.commit(Changes(session_updates=[rec.session]))
        return self.view(rec)
