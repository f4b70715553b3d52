"""Pending requests: a runtime's questions that wait for an application's answer.

Owns each record's `requests`: the requests of the session's open turns, pending or answered
(an answered one stays while its turn runs, so a worker that reconnects gets the answer
again). A request is answered exactly once, decided before any await; when its turn ends, an
unanswered request expires (it never dangles) and every request of the turn leaves memory.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from . import errors
from ._shared import Committer
from .messages import AnswerMsg
from .model import Event, PendingRequest, RequestState, now_us
from .ports import BodyCodec, Changes, SessionReader
from .requests import check_answer

if TYPE_CHECKING:
    from ._leases import Leases
    from ._log import EventLog
    from ._record import SessionRecord
    from ._sessions import SessionCache
    from ._turns import Turns
    from ._workers import Workers

_REQUEST_ID = re.compile(r"^req_[0-9A-Z]{26}$")


class PendingRequests:
    def __init__(self, reader: SessionReader, committer: Committer, codec: BodyCodec) -> None:
        self._reader = reader
        self._committer = committer
        self._codec = codec

    def connect(
        self, *, sessions: SessionCache, events: EventLog, turns: Turns, leases: Leases, workers: Workers
    ) -> None:
        self._sessions = sessions
        self._events = events
        self._turns = turns
        self._leases = leases
        self._workers = workers

    def any_open(self, rec: SessionRecord) -> bool:
        """Whether the session has requests in memory (those of its open turns)."""
        return bool(rec.requests)

    # ----------------------------------------------------------------- opened by the worker

    def check_opened(self, rec: SessionRecord, opened: list[PendingRequest | None]) -> None:
        """Refuse a batch whose request_opened events lack a request or reuse an id."""
        seen: set[str] = set()
        for request in opened:
            if request is None:
                raise errors.InvalidArgument("events.body.request_opened.request", "the request is missing")
            rid = request.request_id
            if not _REQUEST_ID.match(rid):
                raise errors.InvalidArgument(
                    "events.body.request_opened.request.request_id",
                    f'{rid!r} is not a request id: "req_" and 26 characters of [0-9A-Z]',
                )
            if rid in rec.requests or rid in seen:
                raise errors.InvalidArgument(
                    "events.body.request_opened.request.request_id", f"request {rid!r} already exists in the session"
                )
            seen.add(rid)

    def open(self, rec: SessionRecord, request: PendingRequest, turn_id: str, now: int, changes: Changes) -> None:
        """A checked request of the running turn starts pending; the insert goes in `changes`."""
        request.session_id, request.turn_id = rec.session_id, turn_id
        request.state = RequestState.PENDING
        request.create_time_us = request.create_time_us or now  # as the event says
        rec.requests[request.request_id] = request
        changes.request_inserts.append(request)

    def expire(self, rec: SessionRecord, turn_id: str, why: str, changes: Changes) -> list[Event]:
        """The turn ended: its unanswered requests expire (never dangle) and every request of
        the turn leaves memory. Returns the RequestResolved events, numbered next in the log, so
        the caller takes this before it numbers the turn's terminal event (which stays the
        turn's last) and adds them to `changes`."""
        events: list[Event] = []
        now = now_us()
        for request_id, request in list(rec.requests.items()):
            if request.turn_id != turn_id:
                continue
            del rec.requests[request_id]
            if request.state != RequestState.PENDING:
                continue
            request.state = RequestState.EXPIRED
            request.expire_reason = why
            request.resolve_time_us = now
            changes.request_updates.append(request)
            events.append(
                self._events.own_event(rec, turn_id, "request_resolved", self._codec.request_resolved(request))
            )
        return events

    # ----------------------------------------------------------------- answered by the application

    async def respond(
        self, owner: str, session_id: str, request_id: str, answer: dict[str, Any], answer_json: str
    ) -> PendingRequest:
        """Resolve a pending request exactly once and send the answer to the turn's worker."""
        rec = await self._sessions.require(session_id, owner)
        request = rec.requests.get(request_id)
        if request is None:
            stored = await self._reader.get_request(session_id, request_id)
            request = rec.requests.get(request_id)  # it may have arrived during the read
            if request is None:
                if stored is None or rec.deleted:
                    raise errors.RequestNotFound(session_id, request_id)
                raise _already_resolved(stored)
        if request.state != RequestState.PENDING:
            raise _already_resolved(request)
        check_answer(request, answer)
        # Decided here, before any await: a second answer racing this one sees RESOLVED.
        request.state = RequestState.RESOLVED
        request.response_json = answer_json
        request.resolve_time_us = now_us()
        event = self._events.own_event(rec, request.turn_id, "request_resolved", self._codec.request_resolved(request))
        changes = Changes(event_inserts=[event], request_updates=[request])
        changes.on_commit.append(lambda: self._events.published(rec, [event]))
        changes.on_commit.append(lambda: self._deliver(rec, request))
        await self._committer.commit(changes)
        return request

    def _deliver(self, rec: SessionRecord, request: PendingRequest) -> None:
        """Push an answer to the worker running its turn; one that is not connected now gets it
        when its Lease stream attaches again."""
        turn = self._turns.running(rec)
        if turn is None or turn.turn_id != request.turn_id:
            return
        w = self._workers.get(turn.worker_id)
        if w is not None and self._leases.holder(rec) == turn.worker_id:
            w.push(AnswerMsg(rec.session_id, request.turn_id, request.request_id, request.response_json))

    def redeliver(self, rec: SessionRecord) -> None:
        """The running turn's worker attached again: send it every answer it may have missed."""
        for request in rec.requests.values():
            if request.state == RequestState.RESOLVED:
                self._deliver(rec, request)

    async def list_requests(self, owner: str, session_id: str, state: RequestState | None) -> list[PendingRequest]:
        rec = await self._sessions.require(session_id, owner)
        stored = {r.request_id: r for r in await self._reader.list_requests(session_id, state)}
        # Memory is ahead of the database while a commit runs.
        for request in rec.requests.values():
            if state is None or request.state == state:
                stored[request.request_id] = request
            else:
                stored.pop(request.request_id, None)
        return sorted(stored.values(), key=lambda r: (r.create_time_us, r.request_id))


def _already_resolved(request: PendingRequest) -> errors.RequestAlreadyResolved:
    if request.state == RequestState.EXPIRED:
        why = f"expired: {request.expire_reason}"
    else:
        why = "was already answered; each request takes exactly one answer"
    return errors.RequestAlreadyResolved(
        f"request {request.request_id!r} {why}", session_id=request.session_id, request_id=request.request_id
    )
