"""A small in-process fake `SessionService` for the SDK and CLI tests, and builders of the
protos it serves.

`FakeSessionService` serves one shell session whose turn trn_1 emits output, then completes with
exit 3; `FakeAgentSession` serves an agent turn. The fixtures `fake`, `threaded_fake` and
`threaded_agent_fake` are made available to tests/integration by its conftest.py.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from tether.v1 import resources_pb2, session_service_pb2, session_service_pb2_grpc


def _rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] = (),
) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        info = error_details_pb2.ErrorInfo(reason=reason, domain="tether.dev", metadata=metadata or {})
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    return status


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=500_000_000)


def _event(seq: int, turn_id: str = "trn_1", **body) -> resources_pb2.Event:
    return resources_pb2.Event(
        session_id="ses_1",
        seq=seq,
        turn_id=turn_id,
        create_time=_ts(1_700_000_000 + seq),
        body=resources_pb2.EventBody(**body),
    )


def _started(item_id: str, kind: int, **fields) -> dict:
    return {"item_started": resources_pb2.ItemStarted(item=resources_pb2.Item(item_id=item_id, kind=kind, **fields))}


def _completed(item_id: str, kind: int, **fields) -> dict:
    return {
        "item_completed": resources_pb2.ItemCompleted(item=resources_pb2.Item(item_id=item_id, kind=kind, **fields))
    }


def _delta(item_id: str, kind: int, delta: str) -> dict:
    return {"item_delta": resources_pb2.ItemDelta(item_id=item_id, kind=kind, delta=delta)}


def _opened(request_id: str, kind: int, **fields) -> dict:
    return {
        "request_opened": resources_pb2.RequestOpened(
            request=resources_pb2.PendingRequest(request_id=request_id, session_id="ses_1", kind=kind, **fields)
        )
    }


_AGENT = resources_pb2.ITEM_KIND_AGENT_MESSAGE
_COMMAND = resources_pb2.ITEM_KIND_COMMAND_EXECUTION
_FILES = resources_pb2.ITEM_KIND_FILE_CHANGE


class FakeSessionService(session_service_pb2_grpc.SessionServiceServicer):
    """Serves one shell session whose turn trn_1 emits output, then completes with exit 3."""

    def __init__(self) -> None:
        self.log = [
            _event(1, input_received=resources_pb2.InputReceived(input="echo hi")),
            _event(2, turn_started=resources_pb2.TurnStarted(worker_id="w1")),
            _event(
                3,
                output=resources_pb2.OutputChunk(stream=resources_pb2.OUTPUT_STREAM_STDOUT, text="hi\n"),
            ),
            _event(4, turn_completed=resources_pb2.TurnCompleted(exit_code=3)),
        ]
        self.release = asyncio.Event()  # the terminal event is live, sent once set
        self.stream_cancelled = asyncio.Event()
        self.send_keys: dict[str, int] = {}

    def _turn(self) -> resources_pb2.Turn:
        done = self.release.is_set()
        return resources_pb2.Turn(
            turn_id="trn_1",
            session_id="ses_1",
            input="echo hi",
            state=resources_pb2.TURN_STATE_COMPLETED if done else resources_pb2.TURN_STATE_RUNNING,
            exit_code=3 if done else 0,
        )

    async def _not_found(self, context, session_id: str):
        status = _rich_status(
            grpc.StatusCode.NOT_FOUND,
            f"session {session_id} not found",
            reason="SESSION_NOT_FOUND",
            metadata={"session_id": session_id},
        )
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        await context.abort(grpc.StatusCode.NOT_FOUND, status.message)

    async def GetSession(self, request, context):
        if request.session_id != "ses_1":
            await self._not_found(context, request.session_id)
        return session_service_pb2.GetSessionResponse(
            session=resources_pb2.Session(session_id="ses_1", runtime="shell", state=resources_pb2.SESSION_STATE_ACTIVE)
        )

    async def ListSessions(self, request, context):
        ids = ["ses_3", "ses_2", "ses_1"]
        start = int(request.page_token or 0)
        end = start + (request.page_size or 100)
        return session_service_pb2.ListSessionsResponse(
            sessions=[resources_pb2.Session(session_id=i) for i in ids[start:end]],
            next_page_token=str(end) if end < len(ids) else "",
        )

    async def SendInput(self, request, context):
        dedup = request.idempotency_key in self.send_keys
        self.send_keys.setdefault(request.idempotency_key, 1)
        return session_service_pb2.SendInputResponse(
            turn=self._turn(), deduplicated=bool(request.idempotency_key) and dedup
        )

    async def GetTurn(self, request, context):
        return session_service_pb2.GetTurnResponse(turn=self._turn())

    async def StreamSessionEvents(self, request, context):
        if request.session_id != "ses_1":
            await self._not_found(context, request.session_id)
        try:
            stored = [e for e in self.log[:3] if e.seq > request.after_seq]
            if stored:
                yield session_service_pb2.StreamSessionEventsResponse(events=stored)
            if request.stop_at_end:
                return
            await self.release.wait()
            yield session_service_pb2.StreamSessionEventsResponse(events=self.log[3:])
            await asyncio.Event().wait()  # live: stays open until the client cancels
        except asyncio.CancelledError:
            self.stream_cancelled.set()
            raise


@pytest.fixture
async def fake():
    service = FakeSessionService()
    server = grpc.aio.server()
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _serve_in_thread(service_type=None):
    """Run the fake on its own loop so blocking clients can be used from this thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        service = (service_type or FakeSessionService)()
        server = grpc.aio.server()
        session_service_pb2_grpc.add_SessionServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return service, server, f"127.0.0.1:{port}"

    service, server, target = asyncio.run_coroutine_threadsafe(start(), loop).result(5)

    def release():
        loop.call_soon_threadsafe(service.release.set)

    def stop():
        try:
            asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()

    return target, release, stop


@pytest.fixture
def threaded_fake():
    target, release, stop = _serve_in_thread()
    yield target, release
    stop()


class FakeAgentSession(FakeSessionService):
    """A turn of an agent: a message, a command that needed approval, then completion."""

    def __init__(self) -> None:
        super().__init__()
        self.log[3:] = [
            _event(4, **_started("m1", _AGENT)),
            _event(5, **_delta("m1", resources_pb2.DELTA_KIND_AGENT_MESSAGE, "Cleaning up.")),
            _event(6, **_completed("m1", _AGENT, text="Cleaning up.")),
            _event(7, **_started("c1", _COMMAND, command="rm -rf build")),
            _event(
                8,
                **_opened(
                    "req_A",
                    resources_pb2.REQUEST_KIND_COMMAND_APPROVAL,
                    summary="rm -rf build",
                    available_decisions=["accept", "decline"],
                    state=resources_pb2.REQUEST_STATE_PENDING,
                ),
            ),
            _event(
                9,
                request_resolved=resources_pb2.RequestResolved(
                    request_id="req_A",
                    state=resources_pb2.REQUEST_STATE_RESOLVED,
                    response_json='{"decision": "accept"}',
                ),
            ),
            _event(10, **_completed("c1", _COMMAND, command="rm -rf build", exit_code=0)),
            _event(11, token_usage=resources_pb2.TokenUsage(last_input_tokens=10, total_tokens=20)),
            _event(12, turn_completed=resources_pb2.TurnCompleted(exit_code=3)),
        ]

    async def StreamSessionEvents(self, request, context):
        # All of it is stored: every event is sent, then the stream ends (or stays open).
        stored = [e for e in self.log if e.seq > request.after_seq]
        yield session_service_pb2.StreamSessionEventsResponse(events=stored)
        if not request.stop_at_end:
            await asyncio.Event().wait()


@pytest.fixture
def threaded_agent_fake():
    target, release, stop = _serve_in_thread(FakeAgentSession)
    release()
    yield target
    stop()
