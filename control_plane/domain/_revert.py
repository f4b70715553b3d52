"""RevertSession: moving a session's head back to the end of a turn, without deleting anything.

Owns the set of sessions a revert is deciding for (a second revert of the same session meanwhile
is SESSION_BUSY). The log stays append-only: a revert writes a `session_reverted` event naming
the new head turn and the turns after it, and marks those turns `reverted`; they stay readable
(GetTurn, the log) but leave the model-visible history. A worker rebuilding the history from
Resume drops the reverted turns when it reads the event (execution_worker's
`history_from_resume`), so the history is right whether it starts from a snapshot taken before
the revert or from the log alone.

The warm runtime goes: in the same transaction the session's lease is taken back (its holder
gets a revoke and drops the runtime), so the next turn goes to any eligible worker at the next
epoch and rehydrates the reverted history. A session with a turn queued or running, or a
restore under way, is SESSION_BUSY: a revert never races a turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from ._shared import Committer
from .messages import SessionView
from .model import now_us
from .ports import BodyCodec, Changes, SessionReader

if TYPE_CHECKING:
    from ._leases import Leases
    from ._log import EventLog
    from ._record import SessionRecord
    from ._restore import Restores
    from ._sessions import SessionCache
    from ._turns import Turns


class Reverts:
    def __init__(self, reader: SessionReader, committer: Committer, codec: BodyCodec) -> None:
        self._reader = reader
        self._committer = committer
        self._codec = codec
        self._deciding: set[str] = set()  # session ids

    def connect(
        self, *, sessions: SessionCache, turns: Turns, events: EventLog, leases: Leases, restores: Restores
    ) -> None:
        self._sessions = sessions
        self._turns = turns
        self._events = events
        self._leases = leases
        self._restores = restores

    async def revert(self, owner: str, session_id: str, turn_id: str) -> SessionView:
        rec = await self._sessions.require(session_id, owner)
        self._refuse_if_busy(rec)
        self._deciding.add(session_id)
        try:
            # Every turn end decided before now is durable once this empty unit is: the store's
            # turns are current.
            await self._committer.commit(Changes())
            head = await self._reader.get_turn(session_id, turn_id)
            if head is None:
                raise errors.TurnNotFound(session_id, turn_id)
            later = await self._reader.turns_after(session_id, head.ordinal)
            # From here to the submit nothing awaits.
            self._refuse_if_busy(rec, deciding_ok=True)
            if rec.deleted:
                raise errors.SessionNotFound(session_id)
            if not head.state.ended:
                raise errors.TurnNotEnded(
                    f"turn {turn_id!r} of session {session_id!r} is {head.state.name.lower()}; "
                    "a revert moves the head to a turn that ended",
                    session_id=session_id,
                    turn_id=turn_id,
                )
            if head.reverted:
                raise errors.TurnReverted(
                    f"turn {turn_id!r} of session {session_id!r} was reverted and is no longer in the "
                    "model-visible history; revert to a turn before it, or fork the session at it",
                    session_id=session_id,
                    turn_id=turn_id,
                )
            reverted = [t for t in later if not t.reverted]
            for turn in reverted:
                turn.reverted = True
            body = self._codec.session_reverted(turn_id, [t.turn_id for t in reverted])
            event = self._events.own_event(rec, turn_id, "session_reverted", body)
            changes = Changes(turn_updates=reverted, event_inserts=[event])
            self._sessions.touch(rec, now_us(), changes)
            self._leases.take_back(
                rec, f"the session was reverted to turn {turn_id}; its next turn rehydrates that history", changes
            )
            changes.on_commit.append(lambda: self._events.published(rec, [event]))
            await self._committer.commit(changes)
        finally:
            self._deciding.discard(session_id)
        return self._sessions.view(rec)

    def _refuse_if_busy(self, rec: SessionRecord, *, deciding_ok: bool = False) -> None:
        session_id = rec.session_id
        busy = self._turns.current_turn_id(rec)
        if busy:
            raise errors.SessionBusy(
                f"session {session_id!r} has a turn queued or running ({busy}); interrupt it or wait "
                "for it to end, then revert",
                session_id=session_id,
                turn_id=busy,
            )
        if self._restores.in_progress(rec):
            raise errors.SessionBusy(
                f"session {session_id!r} is being restored onto a worker; revert once the restore ends",
                session_id=session_id,
            )
        if not deciding_ok and session_id in self._deciding:
            raise errors.SessionBusy(
                f"session {session_id!r} is being reverted by another call; read it again, then revert",
                session_id=session_id,
            )
