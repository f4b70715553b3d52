"""Pending requests: answered exactly once; when their turn ends, unanswered ones expire (never
dangle), with a RequestResolved event after the turn's terminal event."""

from __future__ import annotations

import pytest

from tests.helpers.processes import eventually
from tether.control_plane.domain import errors
from tether.control_plane.domain.messages import AnswerMsg
from tether.control_plane.domain.model import RequestState

from .harness import OWNER, Worker, finish_turn, new_hub, new_session, run_turn

ANSWER = {"answers": {"q1": {"answers": ["main.py"]}}}


async def test_an_unanswered_request_expires_when_its_turn_ends() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    request = await w1.open_request(offer)
    assert store.requests[request.request_id].state == RequestState.PENDING

    await finish_turn(w1, offer)

    stored = store.requests[request.request_id]
    assert stored.state == RequestState.EXPIRED
    assert stored.expire_reason == "its turn ended (completed) before an answer"
    assert store.kinds(sid)[-2:] == ["request_resolved", "turn_completed"]  # the terminal event is last
    with pytest.raises(errors.RequestAlreadyResolved) as late:
        await hub.respond_to_request(OWNER, sid, request.request_id, ANSWER, "{}")
    assert "expired" in late.value.message
    listed = await hub.list_requests(OWNER, sid, RequestState.PENDING)
    assert listed == []


async def test_requests_expire_when_the_turn_is_lost_with_its_worker() -> None:
    hub, store = new_hub(worker_dead_grace_s=0.01)
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    request = await w1.open_request(offer)

    w1.disconnect()
    await eventually(
        lambda: store.requests[request.request_id].state == RequestState.EXPIRED,
        timeout=5,
        what="the lost turn's request to expire",
    )

    stored = store.requests[request.request_id]
    assert stored.state == RequestState.EXPIRED
    assert stored.expire_reason.startswith("its turn ended: the turn's worker w1 was lost")
    assert store.kinds(sid)[-2:] == ["request_resolved", "turn_failed"]  # the terminal event is last


async def test_an_answered_request_is_sent_to_the_worker_once_and_does_not_expire() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    request = await w1.open_request(offer)
    w1.inbox()

    answered = await hub.respond_to_request(OWNER, sid, request.request_id, ANSWER, '{"answers": 1}')

    assert answered.state == RequestState.RESOLVED
    assert w1.only(AnswerMsg) == [AnswerMsg(sid, offer.turn_id, request.request_id, '{"answers": 1}')]
    with pytest.raises(errors.RequestAlreadyResolved):
        await hub.respond_to_request(OWNER, sid, request.request_id, ANSWER, "{}")
    await finish_turn(w1, offer)
    assert store.requests[request.request_id].state == RequestState.RESOLVED
    assert store.kinds(sid)[-1] == "turn_completed"  # nothing expired after it


async def test_a_wrong_answer_shape_is_refused_and_the_request_stays_pending() -> None:
    hub, store = new_hub()
    w1 = Worker(hub, "w1")
    await w1.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w1, sid)
    request = await w1.open_request(offer)

    with pytest.raises(errors.InvalidArgument):
        await hub.respond_to_request(OWNER, sid, request.request_id, {"decision": "accept"}, "{}")

    assert store.requests[request.request_id].state == RequestState.PENDING
    assert [r.request_id for r in await hub.list_requests(OWNER, sid, RequestState.PENDING)] == [request.request_id]
