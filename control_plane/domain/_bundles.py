"""ExportSession and ImportSession: a session at rest, out of one control plane and into another.

Owns nothing between calls. The bundle's encoding (JSON Lines, versioned; docs/bundles.md) is
`api/`'s business: this part hands out the stored records of a session to export, and stores
the records of a parsed bundle as a new session in one transaction.

Export reads a session with no turn queued or running (SESSION_BUSY otherwise), once every
decision about it is durable: its stored turns, requests and snapshots, and its events up to the
committed end, a page at a time.

Import gives the session the caller's owner and, unless the ids are kept, new ids for the
session, its turns and its requests, with the ids inside event bodies and snapshot history
rebound to them (as a fork does). Lease epochs and worker event numbers belong to the source's
leases and are dropped (the imported log's events count as the control plane's own, epoch 0),
so the first lease of the imported session starts a clean watermark. Workspace checkpoints keep
their seqs and move to the new turn ids; the blobs they name are stored and checked under the
importing owner before this part is asked to store the session (Workspaces). With kept ids, a session or
turn id that exists already is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import errors
from ._shared import Committer
from .messages import SessionView
from .model import Checkpoint, Event, PendingRequest, Session, Snapshot, Turn, new_id, now_us
from .ports import BodyCodec, Changes, SessionReader

if TYPE_CHECKING:
    from ._log import EventLog
    from ._sessions import SessionCache
    from ._turns import Turns


@dataclass
class SessionBundle:
    """A session's stored records, as exported or as read from a bundle. `events` is a list
    when read from a bundle, or pages read from the store while exporting."""

    session: Session
    turns: list[Turn]
    requests: list[PendingRequest]
    snapshots: list[Snapshot]
    events: list[Event] | AsyncIterator[list[Event]]
    # Its workspace checkpoints, by seq; the blobs they name travel beside them (Workspaces).
    checkpoints: list[Checkpoint] = field(default_factory=list)


class Bundles:
    def __init__(self, reader: SessionReader, committer: Committer, codec: BodyCodec) -> None:
        self._reader = reader
        self._committer = committer
        self._codec = codec

    def connect(self, *, sessions: SessionCache, turns: Turns, events: EventLog) -> None:
        self._sessions = sessions
        self._turns = turns
        self._events = events

    async def export(self, owner: str, session_id: str) -> SessionBundle:
        rec = await self._sessions.require(session_id, owner)
        self._refuse_if_busy(rec.session_id, self._turns.current_turn_id(rec))
        # Every decision about the session made before now is durable once this empty unit is.
        await self._committer.commit(Changes())
        self._refuse_if_busy(rec.session_id, self._turns.current_turn_id(rec))
        upto = self._events.committed_seq(rec)
        turns = await self._reader.turns_after(session_id, 0)
        requests = await self._reader.list_requests(session_id, None)
        snapshots = [s for s in await self._reader.list_snapshots(session_id) if s.seq <= upto]
        checkpoints = [c for c in await self._reader.list_checkpoints(session_id) if c.seq <= upto]
        session = dataclasses.replace(rec.session)
        return SessionBundle(
            session,
            turns,
            requests,
            snapshots,
            # From the compacted_seq the bundle states: retention sets it before its delete
            # commits, so the database may still hold events it already counts as dropped.
            self._whole(session_id, session.compacted_seq, upto),
            checkpoints,
        )

    async def _whole(self, session_id: str, after: int, upto: int) -> AsyncIterator[list[Event]]:
        """The events in (after, upto], read a page at a time, checked to come without a gap: a
        compaction (or a delete) that removes some while they are read stops the export with
        `ChangedWhileExported` instead of letting a bundle out with a hole in its log."""
        expected = after + 1
        async for page in self._events.events_between(session_id, after, upto):
            for event in page:
                if event.seq != expected:
                    raise self._changed(session_id, expected)
                expected += 1
            yield page
        if expected != upto + 1:
            raise self._changed(session_id, expected)

    def _changed(self, session_id: str, missing: int) -> errors.ChangedWhileExported:
        rec = self._sessions.get(session_id)
        what = "deleted" if rec is None or rec.deleted else "compacted by retention"
        return errors.ChangedWhileExported(
            f"session {session_id!r} was {what} while it was exported (event {missing} is gone); "
            "what was sent of the bundle is incomplete: export the session again",
            session_id=session_id,
        )

    @staticmethod
    def _refuse_if_busy(session_id: str, busy_turn: str) -> None:
        if busy_turn:
            raise errors.SessionBusy(
                f"session {session_id!r} has a turn queued or running ({busy_turn}); a bundle holds a "
                "session at rest: wait for the turn to end (or interrupt it), then export",
                session_id=session_id,
                turn_id=busy_turn,
            )

    async def import_session(self, owner: str, bundle: SessionBundle, keep_ids: bool) -> SessionView:
        """Store a parsed bundle (checked by its reader: seqs gapless from 1, every record of a
        turn of the bundle, every turn ended) as a new session of `owner`."""
        assert isinstance(bundle.events, list)
        source = bundle.session
        if keep_ids:
            taken = await self._reader.ids_taken(source.session_id, [t.turn_id for t in bundle.turns])
            if source.session_id in taken:
                raise errors.SessionExists(source.session_id)
            if taken:
                raise errors.InvalidBundle(
                    0, f"turn {taken[0]!r} already exists in another session; import without keep_session_id"
                )
        session_id = source.session_id if keep_ids else new_id("ses")
        turn_ids = {t.turn_id: (t.turn_id if keep_ids else new_id("trn")) for t in bundle.turns}
        request_ids = {r.request_id: (r.request_id if keep_ids else new_id("req")) for r in bundle.requests}
        now = now_us()
        session = dataclasses.replace(
            source,
            session_id=session_id,
            owner=owner,
            update_time_us=now,
            runtime_thread_id="",
            turn_count=len(bundle.turns),
        )
        rebind = self._codec.rebind
        changes = Changes(
            turn_inserts=[
                dataclasses.replace(t, turn_id=turn_ids[t.turn_id], session_id=session_id, lease_epoch=0)
                for t in bundle.turns
            ],
            request_inserts=[
                dataclasses.replace(
                    r, request_id=request_ids[r.request_id], session_id=session_id, turn_id=turn_ids[r.turn_id]
                )
                for r in bundle.requests
            ],
            event_inserts=[
                Event(
                    session_id,
                    e.seq,
                    turn_ids[e.turn_id],
                    e.kind,
                    e.body
                    if keep_ids
                    else rebind(e.kind, e.body, session_id, turn_ids[e.turn_id], request_ids, turn_ids),
                    e.create_time_us,
                )
                for e in bundle.events
            ],
            snapshot_inserts=[
                dataclasses.replace(
                    s,
                    snapshot_id=new_id("snp"),
                    session_id=session_id,
                    lease_epoch=0,
                    history=s.history if keep_ids else self._codec.rebind_history(s.history, turn_ids),
                )
                for s in bundle.snapshots
            ],
            # The blobs they name are the owner's already (stored and checked before this).
            checkpoint_inserts=[
                dataclasses.replace(c, session_id=session_id, turn_id=turn_ids[c.turn_id] if c.turn_id else "")
                for c in bundle.checkpoints
            ],
        )
        last_seq = bundle.events[-1].seq if bundle.events else source.compacted_seq
        return await self._sessions.insert_copy(session, last_seq, changes)
