"""A worker that streams a fixed number of events as fast as the contract allows.

Used by the event-throughput benchmark: it takes one offer and writes N output events (64
bytes of text each) in batches, keeping a bounded window of unacknowledged batches in flight.
Run: python -m bench._producer TARGET N_EVENTS BATCH
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

WINDOW = 4


async def main(target: str, n: int, batch: int) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = wgrpc.WorkerServiceStub(ch)
        reg = await stub.Register(
            wpb.RegisterRequest(worker_id="bench_producer", runtimes=["shell"], slots=1), timeout=10
        )
        out: asyncio.Queue = asyncio.Queue()

        async def lease_requests():
            yield wpb.LeaseRequest(open=wpb.LeaseOpen(worker_id="bench_producer", registration_id=reg.registration_id))
            while (m := await out.get()) is not None:
                yield m

        lease = stub.Lease(lease_requests())
        offer = None
        async for msg in lease:
            kind = msg.WhichOneof("kind")
            if kind == "offer":
                offer = msg.offer
                out.put_nowait(
                    wpb.LeaseRequest(
                        accept=wpb.AcceptOffer(
                            session_id=offer.session_id, turn_id=offer.turn_id, lease_epoch=offer.lease_epoch
                        )
                    )
                )
            elif kind == "granted":
                break
        assert offer is not None
        text = "x" * 63 + "\n"
        body = pb.EventBody(output=pb.OutputChunk(stream=pb.OUTPUT_STREAM_STDOUT, text=text))
        sent_batches = asyncio.Semaphore(WINDOW)
        total = n + 2
        acked = asyncio.Event()

        async def requests():
            seq = 1
            first = True
            while seq <= total:
                await sent_batches.acquire()
                events = []
                for _ in range(min(batch, total - seq + 1)):
                    if seq == 1:
                        b = pb.EventBody(turn_started=pb.TurnStarted(worker_id="bench_producer"))
                    elif seq == total:
                        b = pb.EventBody(turn_completed=pb.TurnCompleted(exit_code=0))
                    else:
                        b = body
                    events.append(wpb.WorkerEvent(worker_seq=seq, turn_id=offer.turn_id, body=b))
                    seq += 1
                if first:
                    yield wpb.StreamEventsRequest(
                        worker_id="bench_producer",
                        session_id=offer.session_id,
                        lease_epoch=offer.lease_epoch,
                        events=events,
                    )
                    first = False
                else:
                    yield wpb.StreamEventsRequest(events=events)
            await acked.wait()

        call = stub.StreamEvents(requests())
        last = 0
        async for ack in call:
            done_batches = (ack.acked_worker_seq - last + batch - 1) // batch
            last = ack.acked_worker_seq
            for _ in range(done_batches):
                sent_batches.release()
            if last >= total:
                acked.set()
                break
        out.put_nowait(None)
        lease.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
