"""The async and sync SDK clients against the in-process fake `SessionService`
(tests/helpers/fake_session_service.py): error translation on unary calls and streams, streaming,
waiting for a turn, pagination and deduplication.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tether import sdk

# -- clients against an in-process fake service -----------------------------------------


async def test_async_client_translates_unary_errors(fake):
    _, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        with pytest.raises(sdk.NotFoundError) as info:
            await client.get_session("ses_missing")
        assert info.value.reason == "SESSION_NOT_FOUND"
        assert info.value.metadata == {"session_id": "ses_missing"}
        with pytest.raises(sdk.UnimplementedError):
            await client.fork_session("ses_1", "trn_1")
    await client.close()  # idempotent


async def test_async_client_translates_stream_errors(fake):
    _, target = fake
    async with sdk.AsyncClient(target) as client:
        with pytest.raises(sdk.NotFoundError):
            async for _ in client.stream_events("ses_missing"):
                pass


async def test_stream_yields_events_one_by_one_and_break_cancels(fake):
    service, target = fake
    async with sdk.AsyncClient(target) as client:
        stored = [e async for e in client.stream_events("ses_1", stop_at_end=True)]
        assert [e.seq for e in stored] == [1, 2, 3]
        assert [e.kind for e in stored] == ["input_received", "turn_started", "output"]

        events = client.stream_events("ses_1", after_seq=1)
        async with contextlib.aclosing(events):
            async for event in events:
                if event.seq == 3:
                    break
        await asyncio.wait_for(service.stream_cancelled.wait(), 5)


async def test_wait_for_turn_returns_after_terminal_event(fake):
    service, target = fake
    async with sdk.AsyncClient(target) as client:
        waiter = asyncio.create_task(client.wait_for_turn("ses_1", "trn_1"))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        service.release.set()
        turn = await asyncio.wait_for(waiter, 5)
        assert turn.state is sdk.TurnState.COMPLETED and turn.exit_code == 3


async def test_wait_for_turn_timeout_raises_deadline_exceeded(fake):
    _, target = fake
    async with sdk.AsyncClient(target) as client:
        with pytest.raises(sdk.DeadlineExceededError):
            await client.wait_for_turn("ses_1", "trn_1", timeout_s=0.2)


async def test_iter_sessions_walks_every_page(fake):
    _, target = fake
    async with sdk.AsyncClient(target) as client:
        ids = [s.session_id async for s in client.iter_sessions(page_size=2)]
        assert ids == ["ses_3", "ses_2", "ses_1"]
        page = await client.list_sessions(page_size=2)
        assert page.next_page_token == "2"


async def test_send_input_exposes_deduplicated(fake):
    _, target = fake
    async with sdk.AsyncClient(target) as client:
        first = await client.send_input("ses_1", "echo hi", idempotency_key="k")
        again = await client.send_input("ses_1", "echo hi", idempotency_key="k")
        assert not first.deduplicated and again.deduplicated


def test_sync_client_streams_and_translates(threaded_fake):
    target, release = threaded_fake
    with sdk.Client(target, timeout_s=5) as client:
        assert client.get_session("ses_1").state is sdk.SessionState.ACTIVE
        with pytest.raises(sdk.NotFoundError):
            client.get_session("ses_nope")
        events = client.stream_events("ses_1")
        assert [next(events).seq for _ in range(3)] == [1, 2, 3]
        release()
        assert next(events).is_terminal
        events.close()
        assert [s.session_id for s in client.iter_sessions(page_size=1)] == [
            "ses_3",
            "ses_2",
            "ses_1",
        ]
    client.close()  # idempotent
    with pytest.raises(RuntimeError):
        client.get_session("ses_1")
