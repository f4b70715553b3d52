"""Over the real gRPC API: a turn no connected worker can take says why (Turn and Session
waiting_reason, a turn_waiting event) and, with a queue timeout, fails NO_WORKER; an interrupt
a worker does not honour ends the turn after the interrupt grace."""

from __future__ import annotations

import dataclasses

import grpc

from tether.control_plane import ControlPlane, Settings
from tether.v1 import resources_pb2 as rpb
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc

from ..helpers.processes import FAST, eventually

WHY = "no connected worker offers runtime 'nosuchruntime'"


async def _events(stub: sgrpc.SessionServiceStub, session_id: str) -> list[rpb.Event]:
    call = stub.StreamSessionEvents(
        spb.StreamSessionEventsRequest(session_id=session_id, after_seq=0, stop_at_end=True)
    )
    return [e async for msg in call for e in msg.events]


async def test_a_turn_no_worker_can_take_says_why_then_fails_no_worker_after_the_queue_timeout(tmp_path) -> None:
    timings = dataclasses.replace(FAST, queue_timeout_s=1.0, waiting_notice_s=0.2)
    settings = Settings(port=0, db=str(tmp_path / "t.db"), timings=timings, dev_owner="local", migrate=True)
    async with ControlPlane(settings) as cp, grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        stub = sgrpc.SessionServiceStub(channel)
        session = (await stub.CreateSession(spb.CreateSessionRequest(runtime="nosuchruntime"))).session
        turn = (await stub.SendInput(spb.SendInputRequest(session_id=session.session_id, input="hi"))).turn

        async def waiting() -> bool:
            got = await stub.GetTurn(spb.GetTurnRequest(session_id=session.session_id, turn_id=turn.turn_id))
            return got.turn.waiting_reason == WHY

        await eventually(waiting, timeout=3, what="waiting_reason")
        got = await stub.GetSession(spb.GetSessionRequest(session_id=session.session_id))
        assert got.session.waiting_reason == WHY
        kinds = [e.body.WhichOneof("kind") for e in await _events(stub, session.session_id)]
        assert kinds == ["input_received", "turn_waiting"]

        async def failed() -> bool:
            got = await stub.GetTurn(spb.GetTurnRequest(session_id=session.session_id, turn_id=turn.turn_id))
            return got.turn.state == rpb.TURN_STATE_FAILED

        await eventually(failed, timeout=5, what="NO_WORKER failure")
        events = await _events(stub, session.session_id)
        assert [e.body.WhichOneof("kind") for e in events] == ["input_received", "turn_waiting", "turn_failed"]
        assert events[-1].body.turn_failed.error_message.startswith(f"NO_WORKER: {WHY}")
        got = await stub.GetSession(spb.GetSessionRequest(session_id=session.session_id))
        assert got.session.state == rpb.SESSION_STATE_IDLE and got.session.waiting_reason == ""
