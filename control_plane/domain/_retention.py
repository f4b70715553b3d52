"""Retention: idle sessions archived, then deleted, after the server's (or their owner's) time,
and old events compacted away once a snapshot covers them.

Owns the retention sweep. A session is idle when no turn of it is open and its log has not grown since a
cutoff (`RetentionPolicy`): its last activity, as ListSessions shows it; archiving or renaming
it is not using it, so a session archived for being idle is deleted on the same clock. Every `Retention.sweep_s` the
sweep asks the store for idle sessions, a bounded batch at a time and the longest idle first,
for the default policy (every owner without an override) and for each owner's override, then
archives or deletes each one as ArchiveSession and DeleteSession do, once memory agrees it is
idle (a turn may have been sent since the store was read). Off unless a policy sets a time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import errors
from ._shared import Tasks, log
from .messages import Retention, RetentionPolicy
from .model import now_us
from .ports import SessionReader

if TYPE_CHECKING:
    from ._sessions import SessionCache
    from ._turns import Turns

_BATCH = 200


class Retentions:
    def __init__(self, reader: SessionReader, tasks: Tasks, retention: Retention) -> None:
        self._reader = reader
        self._tasks = tasks
        self.retention = retention
        self.archived = 0  # sessions archived and deleted by retention since start
        self.deleted = 0
        self.compacted = 0  # sessions whose log was compacted

    def connect(self, *, sessions: SessionCache, turns: Turns) -> None:
        self._sessions = sessions
        self._turns = turns

    def start(self) -> None:
        if self.retention.active:
            self._tasks.spawn(self._sweep_forever(), "tether-retention")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.retention.sweep_s)
            try:
                await self.sweep()
            except errors.DomainError as exc:  # a failed write: the next sweep tries again
                log.warning("retention sweep failed: %s", exc)

    def _groups(self) -> list[tuple[str | None, tuple[str, ...], RetentionPolicy]]:
        """(owner or None for every other owner, the owners to leave out, policy)."""
        overridden = tuple(owner for owner, _ in self.retention.by_owner)
        groups: list[tuple[str | None, tuple[str, ...], RetentionPolicy]] = [(None, overridden, self.retention.default)]
        groups += [(owner, (), policy) for owner, policy in self.retention.by_owner]
        return groups

    async def sweep(self) -> tuple[int, int]:
        """Archive and delete the sessions idle past their policy; returns how many of each."""
        archived = deleted = 0
        for owner, others, policy in self._groups():
            if policy.compact_events_after_s:
                self.compacted += await self._compact(owner, others, policy.compact_events_after_s)
            if policy.delete_idle_s:
                deleted += await self._apply(owner, others, policy.delete_idle_s, delete=True)
            if policy.archive_idle_s:
                archived += await self._apply(owner, others, policy.archive_idle_s, delete=False)
        return archived, deleted

    async def _compact(self, owner: str | None, others: tuple[str, ...], after_s: float) -> int:
        """Drop events older than `after_s` that the session's newest snapshot covers, up to the
        first event of any turn that was still open at the snapshot (a resuming worker reads
        that turn's input from the log); one batch of sessions per sweep."""
        cutoff = now_us() - int(after_s * 1e6)
        done = 0
        for session_id, _ in await self._reader.compaction_candidates(
            cutoff, owner=owner, exclude_owners=others, limit=_BATCH
        ):
            watermark, open_first, aged = await self._reader.compaction_facts(session_id, cutoff)
            upto = min(watermark, aged, open_first - 1 if open_first else watermark)
            rec = await self._sessions.load(session_id)
            if rec is None or rec.deleted or upto <= rec.session.compacted_seq:
                continue
            await self._sessions.compacted(rec, upto)
            done += 1
            log.info("compacted session %s: events up to seq %d dropped (its snapshot covers them)", session_id, upto)
        return done

    async def _apply(self, owner: str | None, others: tuple[str, ...], idle_s: float, *, delete: bool) -> int:
        done = 0
        cutoff = now_us() - int(idle_s * 1e6)
        skipped: set[str] = set()
        while True:
            found = await self._reader.idle_sessions(
                cutoff, owner=owner, exclude_owners=others, include_archived=delete, limit=_BATCH
            )
            found = [(sid, who) for sid, who in found if sid not in skipped]
            if not found:
                return done
            for session_id, session_owner in found:
                rec = await self._sessions.load(session_id)
                if rec is None or rec.deleted:
                    continue
                view = self._sessions.view(rec)
                if self._turns.busy(rec) or view.last_activity_us >= cutoff:
                    skipped.add(session_id)  # used since the store was read
                    continue
                try:
                    if delete:
                        await self._sessions.delete(session_owner, session_id)
                    else:
                        await self._sessions.archive(session_owner, session_id)
                except (errors.SessionNotFound, errors.SessionBusy):
                    skipped.add(session_id)
                    continue
                done += 1
                if delete:
                    self.deleted += 1
                else:
                    self.archived += 1
                log.info(
                    "%s session %s of owner %r: idle for more than %gs",
                    "deleted" if delete else "archived",
                    session_id,
                    session_owner,
                    idle_s,
                )
