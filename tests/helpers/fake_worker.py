"""A scripted worker speaking the raw WorkerService contract, for tests that need exact control
over what a worker sends (stale epochs, duplicates, silence)."""

from __future__ import annotations

import asyncio

import grpc

from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc


class FakeWorker:
    def __init__(self, target: str, worker_id: str, runtimes=("shell",), slots: int = 1, labels=None) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = wgrpc.WorkerServiceStub(self.channel)
        self.worker_id = worker_id
        self.runtimes = list(runtimes)
        self.slots = slots
        self.labels = labels or {}
        self.registration_id = ""
        self.inbox: asyncio.Queue[wpb.LeaseResponse] = asyncio.Queue()
        self._out: asyncio.Queue[wpb.LeaseRequest | None] = asyncio.Queue()
        self._call = None
        self._reader: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None

    async def register(self) -> wpb.RegisterResponse:
        resp = await self.stub.Register(
            wpb.RegisterRequest(worker_id=self.worker_id, runtimes=self.runtimes, slots=self.slots, labels=self.labels),
            timeout=5,
        )
        self.registration_id = resp.registration_id
        return resp

    async def open_lease(self, leases=()) -> wpb.LeaseResponse:
        async def requests():
            yield wpb.LeaseRequest(
                open=wpb.LeaseOpen(worker_id=self.worker_id, registration_id=self.registration_id, leases=list(leases))
            )
            while (msg := await self._out.get()) is not None:
                yield msg

        self._call = self.stub.Lease(requests())

        async def read():
            async for msg in self._call:
                await self.inbox.put(msg)

        self._reader = asyncio.create_task(read())
        return await self.next("opened")

    async def next(self, kind: str, timeout: float = 10.0) -> wpb.LeaseResponse:
        """The next Lease message of `kind`, skipping renewals."""

        async def get():
            while True:
                msg = await self.inbox.get()
                if msg.WhichOneof("kind") == kind:
                    return msg
                if msg.WhichOneof("kind") != "renewed":
                    raise AssertionError(f"expected {kind}, got {msg}")

        return await asyncio.wait_for(get(), timeout)

    def start_heartbeat(self, leases: dict[str, int], period: float = 0.1) -> None:
        """Renew `leases` (session id -> epoch; the caller may update it) like a live worker."""

        async def beat() -> None:
            while True:
                refs = [wpb.LeaseRef(session_id=s, lease_epoch=e) for s, e in leases.items()]
                self.send(wpb.LeaseRequest(renew=wpb.RenewLeases(leases=refs)))
                await asyncio.sleep(period)

        self._heartbeat = asyncio.create_task(beat())

    def send(self, msg: wpb.LeaseRequest) -> None:
        self._out.put_nowait(msg)

    async def take_offer(self) -> wpb.Offer:
        offer = (await self.next("offer")).offer
        self.send(
            wpb.LeaseRequest(
                accept=wpb.AcceptOffer(
                    session_id=offer.session_id, turn_id=offer.turn_id, lease_epoch=offer.lease_epoch
                )
            )
        )
        granted = (await self.next("granted")).granted
        assert granted.turn_id == offer.turn_id
        return offer

    async def write(self, session_id: str, epoch: int, events: list[wpb.WorkerEvent]) -> list[wpb.StreamEventsResponse]:
        """One StreamEvents call carrying `events`; returns the acks (raises AioRpcError)."""

        async def requests():
            yield wpb.StreamEventsRequest(
                worker_id=self.worker_id, session_id=session_id, lease_epoch=epoch, events=events
            )

        return [ack async for ack in self.stub.StreamEvents(requests(), timeout=10)]

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._out.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
        await self.channel.close()


def output(seq: int, turn_id: str, text: str) -> wpb.WorkerEvent:
    return wpb.WorkerEvent(
        worker_seq=seq,
        turn_id=turn_id,
        body=pb.EventBody(output=pb.OutputChunk(stream=pb.OUTPUT_STREAM_STDOUT, text=text)),
    )


def completed(seq: int, turn_id: str, exit_code: int = 0) -> wpb.WorkerEvent:
    return wpb.WorkerEvent(
        worker_seq=seq, turn_id=turn_id, body=pb.EventBody(turn_completed=pb.TurnCompleted(exit_code=exit_code))
    )


def started(seq: int, turn_id: str, worker_id: str) -> wpb.WorkerEvent:
    return wpb.WorkerEvent(
        worker_seq=seq, turn_id=turn_id, body=pb.EventBody(turn_started=pb.TurnStarted(worker_id=worker_id))
    )
