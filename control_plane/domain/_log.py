"""The session log and its fan-out: sequence numbers, recent events, live subscribers.

Owns each record's `log` (`LogBook`): the last seq assigned (ahead of the committed one while a
commit runs), the last committed seq, the committed events kept in memory so live subscribers
never touch the database, and the wake-up event subscribers wait on. Events become visible
only in `published`, an on_commit callback, so subscribers see the log in commit order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import errors
from .messages import IncomingEvent
from .model import Event, now_us
from .ports import Observer, SessionReader

if TYPE_CHECKING:
    from ._record import SessionRecord
    from ._sessions import SessionCache

# Committed events kept in memory per session so live subscribers never touch the database.
_RECENT_EVENTS = 4096
_REPLAY_PAGE = 1000
_RESUME_PAGE = 2000


@dataclass
class LogBook:
    last_seq: int  # highest seq assigned (may be ahead of committed_seq while a commit runs)
    committed_seq: int
    recent: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    subscribers: int = 0  # live subscriptions following the log (they keep the session loaded)
    last_event_us: int = 0  # when the last committed event was stored (0: none yet)


class EventLog:
    def __init__(self, reader: SessionReader, observer: Observer) -> None:
        self._reader = reader
        self._observer = observer

    def connect(self, *, sessions: SessionCache) -> None:
        self._sessions = sessions

    # ----------------------------------------------------------------- numbering

    def committed_seq(self, rec: SessionRecord) -> int:
        return rec.log.committed_seq

    def last_seq(self, rec: SessionRecord) -> int:
        return rec.log.last_seq

    def last_event_us(self, rec: SessionRecord) -> int:
        return rec.log.last_event_us

    def own_event(self, rec: SessionRecord, turn_id: str, kind: str, body: bytes) -> Event:
        """The next event of the log, written by the control plane itself."""
        rec.log.last_seq += 1
        return Event(rec.session_id, rec.log.last_seq, turn_id, kind, body, now_us())

    def number(self, rec: SessionRecord, incoming: list[IncomingEvent], epoch: int, now: int) -> list[Event]:
        """The next events of the log, written by the worker holding the lease at `epoch`."""
        session_id = rec.session_id
        seq = rec.log.last_seq
        stored: list[Event] = []
        for e in incoming:
            seq += 1
            stored.append(Event(session_id, seq, e.turn_id, e.kind, e.body, now, epoch, e.worker_seq))
        rec.log.last_seq = seq
        return stored

    def recent_by_worker_seq(self, rec: SessionRecord, epoch: int, worker_seq: int) -> Event | None:
        """The committed event the worker wrote as `worker_seq` under `epoch`, if still among
        the recent events in memory."""
        for e in reversed(rec.log.recent):
            if e.lease_epoch == epoch and e.worker_seq == worker_seq:
                return e
            if e.lease_epoch and (e.lease_epoch < epoch or (e.lease_epoch == epoch and e.worker_seq < worker_seq)):
                return None
        return None

    # ----------------------------------------------------------------- fan-out

    def published(self, rec: SessionRecord, events: list[Event]) -> None:
        """`events` are durable: keep them for subscribers and wake those waiting."""
        book = rec.log
        recent = book.recent
        recent.extend(events)
        if len(recent) > 2 * _RECENT_EVENTS:
            del recent[: len(recent) - _RECENT_EVENTS]
        book.committed_seq = events[-1].seq
        book.last_event_us = events[-1].create_time_us
        changed, book.changed = book.changed, asyncio.Event()
        changed.set()
        self._observer.events_published((now_us() - events[0].create_time_us) / 1e6)

    def followed(self, rec: SessionRecord) -> bool:
        """Whether a subscriber follows the log, or a commit of it is under way."""
        book = rec.log
        return book.subscribers > 0 or book.last_seq != book.committed_seq

    def wake(self, rec: SessionRecord) -> None:
        """Wake every subscriber so it sees the session is gone."""
        rec.log.changed.set()

    async def subscribe(
        self, owner: str, session_id: str, after_seq: int, stop_at_end: bool
    ) -> AsyncIterator[list[Event]]:
        """Committed events after `after_seq`, in order, then live ones as they commit."""
        rec = await self._sessions.require(session_id, owner)
        committed = rec.log.committed_seq
        if after_seq < rec.session.compacted_seq:
            raise errors.CursorExpired(session_id, after_seq, rec.session.compacted_seq)
        if after_seq > committed:
            raise errors.CursorOutOfRange(
                f"cursor {after_seq} is past the end of session {session_id!r}'s log (last seq {committed})",
                last_seq=str(committed),
            )
        return self._follow(rec, after_seq, stop_at_end)

    async def _follow(self, rec: SessionRecord, cursor: int, stop_at_end: bool) -> AsyncIterator[list[Event]]:
        rec.log.subscribers += 1
        try:
            while True:
                if self._sessions.stopping:
                    raise errors.Unavailable(
                        "the control plane is shutting down; reconnect and resume the stream from the last seq you saw"
                    )
                if rec.deleted:
                    current = self._sessions.get(rec.session_id)
                    if current is rec or current is None:
                        raise errors.SessionNotFound(rec.session_id)
                    # The record was dropped after a failed write: continue on a fresh one.
                    fresh = await self._sessions.require(rec.session_id, rec.session.owner)
                    rec.log.subscribers -= 1
                    rec = fresh
                    rec.log.subscribers += 1
                book = rec.log
                if cursor < book.committed_seq:
                    recent = book.recent
                    first = recent[0].seq if recent else None
                    if first is not None and first <= cursor + 1:
                        start = cursor + 1 - first
                        batch = recent[start : start + _REPLAY_PAGE]
                    else:
                        batch = await self._reader.events_after(rec.session_id, cursor, _REPLAY_PAGE)
                        batch = [e for e in batch if e.seq <= book.committed_seq]
                        if batch and batch[0].seq != cursor + 1:
                            # Retention compacted the events the cursor was about to read.
                            raise errors.CursorExpired(rec.session_id, cursor, batch[0].seq - 1)
                    if batch:
                        cursor = batch[-1].seq
                        yield batch
                        continue
                if stop_at_end:
                    return
                changed = book.changed
                if cursor < book.committed_seq or rec.deleted or self._sessions.stopping:
                    continue
                await changed.wait()
        finally:
            rec.log.subscribers -= 1

    async def events_between(self, session_id: str, after_seq: int, upto: int) -> AsyncIterator[list[Event]]:
        """Stored events in (after_seq, upto], a page at a time; the next page is read while
        the caller sends the current one."""
        pending: asyncio.Task[list[Event]] | None = asyncio.ensure_future(
            self._reader.events_after(session_id, after_seq, _RESUME_PAGE)
        )
        try:
            while pending is not None:
                page = [e for e in await pending if e.seq <= upto]
                pending = None
                if not page:
                    return
                if page[-1].seq < upto:
                    pending = asyncio.ensure_future(self._reader.events_after(session_id, page[-1].seq, _RESUME_PAGE))
                yield page
        finally:
            if pending is not None:
                pending.cancel()
