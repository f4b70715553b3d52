"""The bounds of `stream_events`' reconnecting: a stream that never opened (nothing listens at
the address) fails at once, as any call would, and a control plane that stays away ends the
stream with UnavailableError once the give-up time has passed, instead of retrying forever."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import time

import pytest

from tests.helpers.processes import FAST
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.sdk import _async_client


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_stream_that_never_opened_fails_at_once() -> None:
    async with sdk.AsyncClient(f"127.0.0.1:{_closed_port()}") as client:
        started = time.monotonic()
        with pytest.raises(sdk.UnavailableError):
            async for _ in client.stream_events("ses_x"):
                pass
        assert time.monotonic() - started < 2


async def test_a_control_plane_that_stays_away_ends_the_stream_after_the_give_up_time(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_async_client, "RECONNECT_GIVE_UP_S", 1.5)
    cp = ControlPlane(Settings(port=0, db=str(tmp_path / "t.db"), timings=FAST, dev_owner="local"))
    await cp.start()
    async with sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
        session = await client.create_session("shell")
        await client.send_input(session.session_id, "echo queued")  # no worker: it stays queued
        events = client.stream_events(session.session_id)
        first = await asyncio.wait_for(anext(events), timeout=10)  # the stream is open...
        assert first.seq == 1
        closed_at = time.monotonic()
        await cp.close()  # ...until the control plane goes away for good

        async def follow_to_the_end() -> None:
            async for _ in events:
                pass

        with pytest.raises(sdk.UnavailableError):
            await asyncio.wait_for(follow_to_the_end(), timeout=20)
        waited = time.monotonic() - closed_at
        # It retried, then stopped once the next jittered delay would pass the give-up time:
        # with delays drawn from [0.05, 0.1], [0.1, 0.2], [0.2, 0.4], [0.4, 0.8], [0.8, 1.6] s
        # that is after at least 0.75 s of them (and never later than the give-up time allows).
        assert 0.7 < waited < 10, waited
        await events.aclose()
