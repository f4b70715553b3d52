"""ForkSession: a new session made of another one's turns up to a turn that ended.

Owns nothing between calls: a fork reads the source's stored turns, events and requests and
writes the copy in one transaction, so the copy exists whole or not at all.

What a fork holds:
- the source's runtime, worker selector and labels, and `forked_from_*` naming the source and
  the last turn copied; no lease, no snapshot, and no runtime thread;
- the turns with an ordinal up to that turn's, less those a revert took back (the fork is the
  model-visible history), each under a new id (turn ids are global) and numbered from 1, with
  their state, input, timings, worker, result and turn-list summary (the seq range renumbered
  with the log); idempotency keys stay with the source, whose
  callers made them;
- those turns' events, renumbered from 1 without gaps in their original order, with their
  bodies' ids rebound to the copy (`BodyCodec.rebind`) and without the source's lease epochs
  and worker event numbers, which belong to the source's leases; events of later turns (the
  input of a turn queued while the fork turn ran sits among them), of reverted turns, and the
  `session_reverted` events themselves are left out;
- those turns' pending requests (all answered or expired, since the turns ended), under new ids.

The fork's next turn goes to any eligible worker like any session's first turn on a worker: the
worker resumes it from the copied log, which holds the model-visible history (`history_item`
events, or inputs and outputs), so the model sees the source's conversation up to the fork
turn and nothing after it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from . import errors
from ._shared import Committer
from .messages import SessionView
from .model import Event, Session, Turn, new_id, now_us
from .ports import BodyCodec, Changes, SessionReader

if TYPE_CHECKING:
    from ._log import EventLog
    from ._sessions import SessionCache
    from ._turns import Turns


class Forks:
    def __init__(self, reader: SessionReader, committer: Committer, codec: BodyCodec) -> None:
        self._reader = reader
        self._committer = committer
        self._codec = codec

    def connect(self, *, sessions: SessionCache, turns: Turns, events: EventLog) -> None:
        self._sessions = sessions
        self._turns = turns
        self._events = events

    async def fork(self, owner: str, session_id: str, turn_id: str) -> SessionView:
        """Copy `session_id` up to and including `turn_id` (default: its last completed turn)."""
        rec = await self._sessions.require(session_id, owner)
        if turn_id:
            last = await self._turns.get_turn(owner, session_id, turn_id)
            if not last.state.ended:
                raise errors.TurnNotEnded(
                    f"turn {turn_id!r} of session {session_id!r} is {last.state.name.lower()}; a fork copies "
                    "turns that ended: wait for it to end (or interrupt it), then fork",
                    session_id=session_id,
                    turn_id=turn_id,
                )
        else:
            # The writer commits in order: once this empty unit is durable, so is every turn end
            # decided before it, and the store's answer is current.
            await self._committer.commit(Changes())
            found = await self._reader.last_completed_turn(session_id)
            if found is None:
                raise errors.NoCompletedTurn(
                    f"session {session_id!r} has no completed turn to fork at; name one with turn_id",
                    session_id=session_id,
                )
            last = found
        # Every event of an ended turn was decided before the turn ended; wait until they are
        # durable, then read the log up to there.
        await self._committer.commit(Changes())
        upto = self._events.committed_seq(rec)
        if last.reverted:
            raise errors.TurnReverted(
                f"turn {last.turn_id!r} of session {session_id!r} was reverted; fork at a turn of the "
                "model-visible history",
                session_id=session_id,
                turn_id=last.turn_id,
            )
        # Reverted turns left the model-visible history: the fork does not carry them.
        kept = [t for t in await self._reader.turns_upto(session_id, last.ordinal) if not t.reverted]
        # A queued turn can be interrupted while an earlier one still runs.
        still_open = next((t for t in kept if not t.state.ended), None)
        if still_open is not None:
            raise errors.TurnNotEnded(
                f"turn {still_open.turn_id!r} of session {session_id!r}, before the fork turn, is still "
                f"{still_open.state.name.lower()}; wait for it to end (or interrupt it), then fork",
                session_id=session_id,
                turn_id=still_open.turn_id,
            )
        now = now_us()
        fork = Session(
            session_id=new_id("ses"),
            runtime=rec.session.runtime,
            worker_selector=dict(rec.session.worker_selector),
            labels=dict(rec.session.labels),
            create_time_us=now,
            update_time_us=now,
            turn_count=len(kept),
            owner=owner,
            forked_from_session_id=session_id,
            forked_from_turn_id=last.turn_id,
            title=rec.session.title,
        )
        turn_ids = {t.turn_id: new_id("trn") for t in kept}
        copies = {
            t.turn_id: _copied_turn(t, fork.session_id, turn_ids[t.turn_id], ordinal)
            for ordinal, t in enumerate(kept, 1)
        }
        changes = Changes(turn_inserts=list(copies.values()))
        request_ids: dict[str, str] = {}
        for request in await self._reader.list_requests(session_id, None):
            new_turn = turn_ids.get(request.turn_id)
            if new_turn is None:
                continue
            request_ids[request.request_id] = copied_id = new_id("req")
            changes.request_inserts.append(
                dataclasses.replace(request, request_id=copied_id, session_id=fork.session_id, turn_id=new_turn)
            )
        # A log compacted by retention starts after its snapshot's watermark: the snapshot, cut to
        # the copied turns, carries the history of the events that are gone.
        snapshot = await self._reader.latest_snapshot(session_id) if rec.session.compacted_seq else None
        snapshot_at = 0  # the fork's seq of its last copied event the snapshot covers
        seq = 0
        rebind = self._codec.rebind
        async for page in self._events.events_between(session_id, rec.session.compacted_seq, upto):
            for e in page:
                new_turn = turn_ids.get(e.turn_id)
                if new_turn is None or e.kind == "session_reverted":
                    continue
                seq += 1
                if snapshot is not None and e.seq <= snapshot.seq:
                    snapshot_at = seq
                copy = copies[e.turn_id]
                copy.first_seq = copy.first_seq or seq
                copy.last_seq = seq  # the turn ended: its last event is its terminal one
                body = rebind(e.kind, e.body, fork.session_id, new_turn, request_ids)
                changes.event_inserts.append(Event(fork.session_id, seq, new_turn, e.kind, body, e.create_time_us))
        if snapshot is not None:
            history, count = self._codec.history_of_turns(snapshot.history, turn_ids)
            changes.snapshot_inserts.append(
                dataclasses.replace(
                    snapshot,
                    snapshot_id=new_id("snp"),
                    session_id=fork.session_id,
                    seq=snapshot_at,
                    lease_epoch=0,
                    history=history,
                    history_count=count,
                )
            )
        # The fork's files: each copied turn's workspace checkpoint (the newest per turn), at the
        # copy's seq of that turn's end; blobs are the owner's, so nothing is copied but rows.
        checkpoints = {c.turn_id: c for c in await self._reader.list_checkpoints(session_id) if c.turn_id in copies}
        for old_turn, checkpoint in checkpoints.items():
            changes.checkpoint_inserts.append(
                dataclasses.replace(
                    checkpoint,
                    session_id=fork.session_id,
                    seq=copies[old_turn].last_seq,
                    turn_id=turn_ids[old_turn],
                    create_time_us=now,
                )
            )
        return await self._sessions.insert_copy(fork, seq, changes)


def _copied_turn(turn: Turn, session_id: str, turn_id: str, ordinal: int) -> Turn:
    return Turn(
        turn_id=turn_id,
        session_id=session_id,
        ordinal=ordinal,
        input=turn.input,
        state=turn.state,
        create_time_us=turn.create_time_us,
        worker_id=turn.worker_id,
        exit_code=turn.exit_code,
        error_message=turn.error_message,
        end_time_us=turn.end_time_us,
        start_time_us=turn.start_time_us,
        usage=turn.usage,
        final_message=turn.final_message,
    )
