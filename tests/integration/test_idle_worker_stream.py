"""An idle worker (no lease, nothing running) renews only every idle heartbeat interval: the
control plane must keep its Lease stream open in between, from the very first message, and
still close a stream that stays silent past 3 idle intervals."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tether.control_plane import ControlPlane, Settings
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

from ..helpers.processes import FAST

TIMINGS = dataclasses.replace(FAST, heartbeat_interval_s=0.1, liveness_timeout_s=0.3, idle_heartbeat_interval_s=0.5)


async def test_an_idle_stream_stays_open_between_idle_renewals_and_closes_past_three(tmp_path) -> None:
    settings = Settings(port=0, db=str(tmp_path / "t.db"), timings=TIMINGS, dev_owner="local", migrate=True)
    async with ControlPlane(settings) as cp, grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        stub = wgrpc.WorkerServiceStub(channel)
        reg = await stub.Register(wpb.RegisterRequest(worker_id="idle-1", runtimes=["shell"], slots=1))
        assert reg.idle_heartbeat_interval.ToTimedelta().total_seconds() == pytest.approx(0.5)
        outbox: asyncio.Queue[wpb.LeaseRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[wpb.LeaseRequest]:
            yield wpb.LeaseRequest(open=wpb.LeaseOpen(worker_id="idle-1", registration_id=reg.registration_id))
            while (msg := await outbox.get()) is not None:
                yield msg

        call = stub.Lease(requests())
        assert (await call.read()).WhichOneof("kind") == "opened"
        # Silent from the start for longer than the liveness timeout (0.3 s), but less than
        # 3 idle intervals: still open, and a renewal is answered.
        await asyncio.sleep(1.0)
        outbox.put_nowait(wpb.LeaseRequest(renew=wpb.RenewLeases(held_digest=wpb.LeaseDigest())))
        answer = await asyncio.wait_for(call.read(), 2)
        assert answer.WhichOneof("kind") == "renewed" and not answer.renewed.resync

        # Then silent past 3 idle intervals (1.5 s): closed as dead.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            while True:
                msg = await asyncio.wait_for(call.read(), 5)
                assert msg is not grpc.aio.EOF
        assert closed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no heartbeat" in (closed.value.details() or "")
        assert 1.2 < time.monotonic() - started < 4
        outbox.put_nowait(None)
