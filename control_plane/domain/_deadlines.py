"""Turn deadlines: the control plane ends every running turn itself when its worker does not.

Owns one timer per running turn that has a deadline, and the time each interrupt was asked
for. Two deadlines:

- The interrupt grace (`Timings.interrupt_grace_s`): an interrupt the worker has not honoured
  (no terminal event) within the grace ends the turn as `turn_interrupted`, with a reason that
  says so, and the worker loses that session's lease (it is revoked; every later write of the
  turn is refused `LEASE_LOST`), so a stuck runtime cannot keep a session busy forever.
- The maximum turn duration (`Timings.max_turn_s`, 0: none): a turn still running that long
  after its worker accepted it is interrupted, and the grace above then applies.

The timers fire on the event loop; each checks that its turn still runs at the same epoch
before acting, so a turn that ended meanwhile (or moved) is never touched.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._shared import Tasks, log
from .messages import InterruptMsg, Timings
from .model import Turn, TurnState, now_us

if TYPE_CHECKING:
    from ._leases import Leases
    from ._record import SessionRecord
    from ._turns import Turns
    from ._workers import Workers


class TurnDeadlines:
    def __init__(self, tasks: Tasks, timings: Timings) -> None:
        self._tasks = tasks
        self._timings = timings
        self._timers: dict[str, asyncio.TimerHandle] = {}  # turn id -> its next deadline
        self.forced_ends = 0  # turns ended here because their worker did not end them

    def connect(self, *, turns: Turns, leases: Leases, workers: Workers) -> None:
        self._turns = turns
        self._leases = leases
        self._workers = workers

    # ----------------------------------------------------------------- what Turns tells it

    def started(self, rec: SessionRecord, turn: Turn) -> None:
        """`turn` runs now: arm the maximum duration, if there is one."""
        limit = self._timings.max_turn_s
        if limit > 0:
            why = f"the turn ran past the server's maximum turn duration of {limit:g}s"
            self._arm(turn, limit, self._interrupt, rec, turn, turn.lease_epoch, why)

    def interrupted(self, rec: SessionRecord, turn: Turn, reason: str) -> None:
        """An interrupt of the running `turn` went to its worker: the grace starts (once)."""
        if turn.interrupt_time_us:
            return  # the first interrupt's grace runs already
        turn.interrupt_time_us = now_us()
        grace = self._timings.interrupt_grace_s
        self._arm(turn, grace, self._force_end, rec, turn, turn.lease_epoch, reason)

    def ended(self, turn: Turn) -> None:
        """`turn` ended: its deadlines are off."""
        timer = self._timers.pop(turn.turn_id, None)
        if timer is not None:
            timer.cancel()

    # ----------------------------------------------------------------- the timers

    def _arm(self, turn: Turn, delay: float, fire: object, *args: object) -> None:
        self.ended(turn)
        loop = asyncio.get_running_loop()
        self._timers[turn.turn_id] = loop.call_later(delay, fire, *args)  # type: ignore[arg-type]

    def _still_running(self, rec: SessionRecord, turn: Turn, epoch: int) -> bool:
        return (
            not rec.deleted
            and self._turns.running(rec) is turn
            and turn.state == TurnState.RUNNING
            and self._leases.held_at(rec, epoch)
        )

    def _interrupt(self, rec: SessionRecord, turn: Turn, epoch: int, why: str) -> None:
        self._timers.pop(turn.turn_id, None)
        if not self._still_running(rec, turn, epoch):
            return
        log.warning("turn %s of session %s: %s; interrupting it", turn.turn_id, rec.session_id, why)
        holder = self._workers.get(turn.worker_id)
        if holder is not None:
            holder.push(InterruptMsg(rec.session_id, turn.turn_id, why))
        self.interrupted(rec, turn, why)

    def _force_end(self, rec: SessionRecord, turn: Turn, epoch: int, reason: str) -> None:
        self._timers.pop(turn.turn_id, None)
        if not self._still_running(rec, turn, epoch):
            return
        grace = self._timings.interrupt_grace_s
        why = (
            f"interrupted ({reason}); the worker {turn.worker_id} did not stop the turn within the "
            f"{grace:g}s interrupt grace, so the control plane ended it and took the session's lease back"
        )
        self.forced_ends += 1
        self._tasks.spawn(
            self._leases.drop(rec, why, revoke=True, cause="turn_deadline", ending=(TurnState.INTERRUPTED, why)),
            f"tether-force-end-{turn.turn_id}",
        )
