"""Offers and turns: deciding on offers, reserving slots until the grant, and running granted
turns (or restore-only placements) in their session's runtime, with interrupts and answers to
pending requests routed to the turn they are for.

A slot is reserved when an offer is accepted, so a burst of offers cannot oversubscribe the
worker; the reservation ends with the grant, the offer's expiry, a lost stream or a revocation.
A granted turn runs on the session's warm runtime, or rehydrates one first (a session not held
here before its grant, a runtime not warm, or `resume_required`), failing closed when it
cannot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tether import logs
from tether.execution_worker._context import Link, TaskGroup
from tether.execution_worker._convert import event_body, turn_started_body, workspace_restored_body
from tether.execution_worker._errors import describe
from tether.execution_worker._session import LeaseLost, RehydrationFailed, Session, SessionTable
from tether.execution_worker._settings import WorkerSettings
from tether.execution_worker._snapshots import Snapshots
from tether.execution_worker._tracing import in_turn_span, traced_events, traced_rehydrate
from tether.execution_worker.runtime import (
    TERMINAL_EVENTS,
    HistoryAppended,
    ItemCompleted,
    ItemStarted,
    RawEvent,
    Runtime,
    RuntimeFactory,
    TokenUsage,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    honours_output_schema,
)
from tether.v1 import worker_service_pb2

#: The events that linger (up to `_events.LINGER_S`) for the turn's next one, so they travel
#: with it in one StreamEvents message: bookkeeping a user does not watch arrive (an item's
#: start and end, whose text the deltas already streamed, token counts, the model-visible
#: history, raw runtime messages). Output, deltas, pending requests, errors and the turn's end
#: leave at once, and take whatever lingers with them.
LINGERING_EVENTS = (ItemStarted, ItemCompleted, TokenUsage, HistoryAppended, RawEvent)

_log = logging.getLogger("tether.execution_worker")

#: ReleaseLease.reason prefix when a restore-only placement could not rehydrate.
RELEASE_REHYDRATION_FAILED = "rehydration failed"

Rehydrate = Callable[..., Awaitable[Runtime | None]]


@dataclass
class _Reservation:
    offer: worker_service_pb2.Offer
    expires_at: float


class Turns:
    """The offers a worker takes and the turns it runs.

    `rehydrate(session, skip_turn_id=...)` rebuilds a session's runtime from its stored history
    (returning None when the session was dropped meanwhile; raising `LeaseLost` or
    `RehydrationFailed`); `drop_later(session_id, epoch, why)` forgets a session whose lease
    is gone.
    """

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        worker_id: str,
        runtimes: Mapping[str, RuntimeFactory],
        link: Link,
        tasks: TaskGroup,
        sessions: SessionTable,
        snapshots: Snapshots,
        rehydrate: Rehydrate,
        drop_later: Callable[[str, int, str], None],
        changed: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._worker_id = worker_id
        self._runtimes = runtimes
        self._link = link
        self._tasks = tasks
        self._sessions = sessions
        self._snapshots = snapshots
        self._rehydrate = traced_rehydrate(rehydrate)
        self._drop_later = drop_later
        self._changed = changed
        self._reservations: dict[tuple[str, str], _Reservation] = {}
        self._granted_waiting: set[str] = set()  # granted offers waiting for the previous turn
        self.draining = False

    # -- reservations -----------------------------------------------------------------------------

    @property
    def reserved(self) -> int:
        return len(self._reservations)

    def free_slots(self) -> int:
        return self._settings.slots - self._sessions.running_turns() - len(self._reservations)

    def purge_expired(self) -> None:
        now = asyncio.get_running_loop().time()
        expired = [key for key, r in self._reservations.items() if r.expires_at <= now]
        for key in expired:
            del self._reservations[key]
        if expired:
            self._changed.set()

    def clear_reservations(self) -> None:
        """The Lease stream ended: grants for these would have come on it; the server re-offers."""
        if self._reservations:
            self._reservations.clear()
            self._changed.set()

    def awaits_grant(self, session_id: str) -> bool:
        """An offer for the session was accepted and its grant has not come yet."""
        return any(sid == session_id for sid, _ in self._reservations)

    def forget_reservations(self, session_id: str, lease_epoch: int) -> None:
        """An accepted offer revoked before its grant: free the slot it reserved."""
        for key, reservation in list(self._reservations.items()):
            if key[0] == session_id and (not lease_epoch or reservation.offer.lease_epoch == lease_epoch):
                del self._reservations[key]
                self._changed.set()

    # -- offers -----------------------------------------------------------------------------------

    def _rejection(self, offer: worker_service_pb2.Offer) -> str | None:
        """Why the offer (a turn or a restore-only placement) is declined; None to accept."""
        if self.draining:
            return "worker draining"
        if offer.runtime not in self._runtimes:
            return f"runtime {offer.runtime!r} not available (have {', '.join(self._runtimes)})"
        session = self._sessions.get(offer.session_id)
        # A restore still rehydrating is not busy: a turn granted meanwhile waits for it.
        busy = session is not None and session.turn_task is not None
        if busy or self.awaits_grant(offer.session_id):
            return "session busy on this worker"
        self.purge_expired()
        if self.free_slots() <= 0:
            return "no free slot"
        return None

    async def on_offer(self, offer: worker_service_pb2.Offer) -> None:
        if offer.HasField("granted"):
            self._run_granted_offer(offer)
            return
        lease = self._link.lease
        what = "restore" if offer.restore_only else "offer"
        reason = self._rejection(offer)
        if reason is not None:
            await lease.send(
                worker_service_pb2.LeaseRequest(
                    reject=worker_service_pb2.RejectOffer(
                        session_id=offer.session_id,
                        turn_id=offer.turn_id,
                        lease_epoch=offer.lease_epoch,
                        reason=reason,
                    )
                )
            )
            _log.info(
                "%s %s/%s rejected: %s",
                what,
                offer.session_id,
                offer.turn_id,
                reason,
                extra={"session_id": offer.session_id, "turn_id": offer.turn_id},
            )
            return
        # Reserve before answering so a burst of offers cannot oversubscribe the slots.
        expires = asyncio.get_running_loop().time() + lease.timings.offer_timeout_s + self._settings.rpc_timeout_s
        self._reservations[(offer.session_id, offer.turn_id)] = _Reservation(offer, expires)
        sent = await lease.send(
            worker_service_pb2.LeaseRequest(
                accept=worker_service_pb2.AcceptOffer(
                    session_id=offer.session_id, turn_id=offer.turn_id, lease_epoch=offer.lease_epoch
                )
            )
        )
        if sent:
            _log.info(
                "%s %s/%s accepted (epoch %d)",
                what,
                offer.session_id,
                offer.turn_id,
                offer.lease_epoch,
                extra={"session_id": offer.session_id, "turn_id": offer.turn_id},
            )
        else:
            self._reservations.pop((offer.session_id, offer.turn_id), None)

    def _run_granted_offer(self, offer: worker_service_pb2.Offer) -> None:
        """An offer that carries its grant (the next turn of a session whose warm runtime is
        here): the control plane already stored the turn as running here, so there is nothing
        to accept and it is never rejected. It runs now, or right after the session's previous
        turn if that is still finishing."""
        if self._sessions.gave_back(offer.session_id, offer.lease_epoch):
            # It crossed our release on the wire: the control plane queues the turn again when
            # the release reaches it, for whichever worker takes the session next.
            _log.info(
                "granted offer %s/%s not run: this worker released the session at epoch %d",
                offer.session_id,
                offer.turn_id,
                offer.lease_epoch,
                extra={"session_id": offer.session_id, "turn_id": offer.turn_id},
            )
            return
        _log.info(
            "offer %s/%s granted with the offer (epoch %d)",
            offer.session_id,
            offer.turn_id,
            offer.lease_epoch,
            extra={"session_id": offer.session_id, "turn_id": offer.turn_id},
        )
        live = self._sessions.get(offer.session_id)
        previous = live.turn_task if live is not None else None
        if previous is None:
            self._start_granted(offer, offer.granted)
            return

        async def after_previous() -> None:
            try:
                await asyncio.wait({previous})
            finally:
                self._granted_waiting.discard(offer.turn_id)
            self._start_granted(offer, offer.granted)

        self._granted_waiting.add(offer.turn_id)
        self._tasks.spawn(after_previous(), f"granted turn {offer.turn_id}")

    def granted_waiting(self) -> set[str]:
        """Turns granted with their offer that wait for their session's previous turn."""
        return set(self._granted_waiting)

    def on_granted(self, granted: worker_service_pb2.OfferGranted) -> None:
        reservation = self._reservations.pop((granted.session_id, granted.turn_id), None)
        self._changed.set()
        if reservation is None:
            # Without the offer there is no input to run; the server times the turn out.
            _log.warning("grant for unknown offer %s/%s ignored", granted.session_id, granted.turn_id)
            return
        self._start_granted(reservation.offer, granted)

    def _start_granted(self, offer: worker_service_pb2.Offer, granted: worker_service_pb2.OfferGranted) -> None:
        epoch = granted.lease_epoch or offer.lease_epoch
        # A new epoch retires what was held under an older one (it is rehydrated afresh).
        self._sessions.retire_other_epochs(offer.session_id, epoch)
        if offer.restore_only:
            live = self._sessions.get(offer.session_id)
            if live is not None and (live.turn_task is not None or live.restore_task is not None):
                _log.warning("restore of session %s ignored: it is busy here at epoch %d", offer.session_id, epoch)
                return
            session = self._sessions.open(offer.session_id, epoch, offer.runtime)
            session.restore_task = self._tasks.spawn(self._restore(session), f"restore {offer.session_id}")
            return
        session = self._sessions.open(offer.session_id, epoch, offer.runtime)
        session.turn_id = offer.turn_id
        session.turn_generation += 1
        session.pending_interrupt = None
        session.turn_task = self._tasks.spawn(
            in_turn_span(offer, self._run_turn(session, offer)), f"turn {offer.turn_id}"
        )

    # -- restores and turns -------------------------------------------------------------------------

    async def _restore(self, session: Session) -> None:
        """A restore-only placement: rehydrate the runtime and keep it warm, then confirm with
        a snapshot at the new epoch. Fails closed: a runtime that cannot be rebuilt from the
        history is never replaced by an empty one; the lease goes back with the reason."""
        logs.bind(session_id=session.session_id)  # this task's log lines name the session
        try:
            runtime = await self._rehydrate(session, skip_turn_id="")
        except LeaseLost:
            self._drop_later(session.session_id, session.lease_epoch, "LEASE_LOST on Resume")
            return
        except RehydrationFailed as failure:
            session.restore_task = None
            reason = f"{RELEASE_REHYDRATION_FAILED}: {failure}"
            await self._sessions.release(session.session_id, session.lease_epoch, reason, session)
            return
        finally:
            session.restore_task = None
            self._changed.set()
        if runtime is None:
            return  # the session was dropped meanwhile
        # Captured now, before a turn granted next could add to the history.
        self._snapshots.spawn_upload(session, self._snapshots.capture(session), request_id="", why="restore")

    async def _run_turn(self, session: Session, offer: worker_service_pb2.Offer) -> None:
        turn_id = offer.turn_id
        logs.bind(session_id=session.session_id, turn_id=turn_id)  # this task's log lines name the turn
        outbox = session.outbox
        terminal: object = None

        def started() -> None:
            # turn_started goes first, once the runtime is up, so it carries the runtime's
            # thread id also on a session's first turn and the first turn after a move.
            # It lingers for the turn's next event, so a short turn's events travel together.
            outbox.emit(
                turn_id,
                turn_started_body(self._worker_id, session.runtime.runtime_thread_id if session.runtime else ""),
                linger=True,
            )

        try:
            if session.restore_task is not None:
                # A turn right after a restore-only placement runs on the runtime it rebuilds.
                await asyncio.wait({session.restore_task})
            runtime = session.runtime
            # No warm runtime also covers a session this worker did not hold when the offer
            # came: one it cooled and released just as the control plane, not having seen the
            # release yet, sent a sticky offer (same epoch, resume_required false).
            if runtime is None or offer.resume_required:
                try:
                    runtime = await self._rehydrate(session, skip_turn_id=turn_id)
                except LeaseLost:
                    self._drop_later(session.session_id, session.lease_epoch, "LEASE_LOST on Resume")
                    return
                except RehydrationFailed as failure:
                    # Fails closed: never run the turn on an empty history by mistake.
                    terminal = TurnFailed(f"could not rehydrate session {session.session_id}: {failure}")
                    started()
                    outbox.emit(turn_id, event_body(terminal))
                    return
                if runtime is None:
                    return
            started()
            workspace = session.workspace
            if workspace is not None:
                if workspace.restored is not None:
                    outbox.emit(turn_id, workspace_restored_body(self._worker_id, workspace.restored))
                    workspace.restored = None
                # A checkpoint being scanned holds the workspace still: the turn waits for it.
                await workspace.gate.wait_free()
            if session.pending_interrupt is not None:
                terminal = TurnInterrupted(session.pending_interrupt)
                outbox.emit(turn_id, event_body(terminal))
                return
            limit = self._settings.turn_timeout_s
            timer = (
                asyncio.get_running_loop().call_later(
                    limit,
                    self.interrupt_session,
                    session,
                    f"the turn ran longer than the worker's turn timeout ({limit:g} s)",
                )
                if limit > 0
                else None
            )
            if offer.output_schema:
                if not honours_output_schema(self._runtimes[offer.runtime]):
                    terminal = TurnFailed(f"runtime {offer.runtime!r} on this worker cannot honour an output schema")
                    outbox.emit(turn_id, event_body(terminal))
                    return
                turn_events = runtime.run_turn(turn_id, offer.input, output_schema=json.loads(offer.output_schema))  # type: ignore[call-arg]
                turn_events = traced_events(turn_events, offer.runtime)
            else:
                turn_events = traced_events(runtime.run_turn(turn_id, offer.input), offer.runtime)
            try:
                async for event in turn_events:
                    if isinstance(event, TERMINAL_EVENTS):
                        if terminal is not None:
                            continue  # exactly one terminal event per turn, whatever the runtime does
                        terminal = event
                    outbox.emit(turn_id, event_body(event), linger=isinstance(event, LINGERING_EVENTS))
            finally:
                if timer is not None:
                    timer.cancel()
            if terminal is None:
                terminal = TurnFailed("the runtime ended the turn without a result")
                outbox.emit(turn_id, event_body(terminal))
        except asyncio.CancelledError:
            raise  # the session was dropped or the worker closes: the lease is not ours to write
        except Exception as error:
            _log.exception("turn %s of session %s failed in the worker", turn_id, session.session_id)
            if terminal is None and not session.dropped:
                terminal = TurnFailed(f"worker error: {describe(error)}")
                outbox.emit(turn_id, event_body(terminal))
        finally:
            session.turn_id = None
            session.turn_task = None
            session.pending_interrupt = None
            self._changed.set()
            if terminal is not None:
                _log.info(
                    "turn %s of session %s finished: %s", turn_id, session.session_id, _describe_terminal(terminal)
                )
            self._snapshots.after_turn(session)

    # -- interrupts and answers -----------------------------------------------------------------------

    def on_interrupt(self, request: worker_service_pb2.InterruptRequested) -> None:
        session = self._sessions.get(request.session_id)
        if session is None or session.turn_task is None or session.turn_id != request.turn_id:
            _log.debug("interrupt for %s/%s ignored: not running here", request.session_id, request.turn_id)
            return
        _log.info("interrupting turn %s of session %s", request.turn_id, request.session_id)
        self.interrupt_session(session, request.reason or "interrupted by request")

    def interrupt_session(self, session: Session, reason: str) -> None:
        session.pending_interrupt = reason
        if session.runtime is not None:
            self._tasks.spawn(session.runtime.interrupt(reason), f"interrupt {session.session_id}")

    def on_answered(self, answered: worker_service_pb2.RequestAnswered) -> None:
        """An application answered a pending request: hand it to the runtime, once. Repeats (a
        reconnect re-sends answers) and answers for turns no longer running here are ignored."""
        session = self._sessions.get(answered.session_id)
        if session is None or session.runtime is None or session.turn_id != answered.turn_id:
            _log.debug(
                "answer to %s/%s ignored: its turn is not running here", answered.session_id, answered.request_id
            )
            return
        try:
            answer = json.loads(answered.response_json)
        except ValueError:
            _log.warning("answer to request %s is not JSON; ignoring it", answered.request_id)
            return
        self._tasks.spawn(
            _deliver_answer(session.runtime, answered.request_id, answer), f"answer {answered.request_id}"
        )


async def _deliver_answer(runtime: Runtime, request_id: str, answer: Any) -> None:
    if await runtime.respond(request_id, answer):
        _log.info("request %s answered", request_id)
    else:
        _log.debug("request %s already answered or gone; repeat ignored", request_id)


def _describe_terminal(event: object) -> str:
    if isinstance(event, TurnCompleted):
        return f"completed (exit {event.exit_code})"
    if isinstance(event, TurnFailed):
        return f"failed: {event.error_message}"
    if isinstance(event, TurnInterrupted):
        return f"interrupted: {event.reason}"
    return repr(event)
