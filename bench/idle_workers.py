"""What idle connected workers cost the control plane.

    cp_idle_cpu_pct_1k_workers    the control plane's CPU, in % of one core, over 40 s with
                                  1,000 connected workers that run nothing (target: <= 2 %)
    cp_rss_kib_per_idle_worker    (RSS with them connected - RSS before) / 1,000 (target: <= 40)

The workers are speakers of the raw WorkerService contract in this process, ten per TCP
connection (100 channels): each registers, opens its Lease stream and renews as a real idle
worker does (execution_worker/_lease.py), holding no lease: every idle heartbeat interval the
control plane sets (every heartbeat interval if it sets none), with the digest of its (no)
leases when the control plane takes digests. Only the control
plane's own CPU (utime + stime in /proc) and RSS (VmRSS) are measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

from ._footprint import idle_cpu_pct, rss_mib
from ._harness import connected_workers, emit, procs

WORKERS = 1000
PER_CONNECTION = 10
WINDOW_S = 40.0  # two idle heartbeat intervals at the default


class IdleWorker:
    def __init__(self, stub: wgrpc.WorkerServiceStub, worker_id: str) -> None:
        self.stub = stub
        self.worker_id = worker_id
        self.renewed = 0

    async def run(self, stop: asyncio.Event) -> None:
        reg = await self.stub.Register(
            wpb.RegisterRequest(worker_id=self.worker_id, runtimes=["shell"], slots=1), timeout=30
        )
        interval = max(
            reg.heartbeat_interval.ToTimedelta().total_seconds() or 2.0,
            reg.idle_heartbeat_interval.ToTimedelta().total_seconds(),
        )
        renew = wpb.RenewLeases()
        if reg.lease_digests:
            renew.held_digest.CopyFrom(wpb.LeaseDigest(count=0, xor=0))
        outbox: asyncio.Queue[wpb.LeaseRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[wpb.LeaseRequest]:
            yield wpb.LeaseRequest(open=wpb.LeaseOpen(worker_id=self.worker_id, registration_id=reg.registration_id))
            while (msg := await outbox.get()) is not None:
                yield msg

        call = self.stub.Lease(requests())

        async def beat() -> None:
            while not stop.is_set():
                await asyncio.sleep(interval)
                outbox.put_nowait(wpb.LeaseRequest(renew=renew))

        beating = asyncio.create_task(beat())
        try:
            async for msg in call:
                if msg.WhichOneof("kind") == "renewed":
                    self.renewed += 1
                if stop.is_set():
                    break
        finally:
            beating.cancel()
            outbox.put_nowait(None)
            call.cancel()


async def main() -> None:
    with procs() as ps:
        cp = ps.start_control_plane()
        assert cp.proc is not None
        await asyncio.sleep(2)
        before = rss_mib(cp.proc.pid)
        channels = [grpc.aio.insecure_channel(cp.target) for _ in range(WORKERS // PER_CONNECTION)]
        stop = asyncio.Event()
        workers = [
            IdleWorker(wgrpc.WorkerServiceStub(channels[i // PER_CONNECTION]), f"idle-{i:04d}") for i in range(WORKERS)
        ]
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        try:
            deadline = time.monotonic() + 120
            while len(await connected_workers(cp.target)) < WORKERS:
                failed = next((t.exception() for t in tasks if t.done() and t.exception() is not None), None)
                if failed is not None:
                    raise failed
                if time.monotonic() > deadline:
                    raise RuntimeError("the idle workers did not all connect within 120 s")
                await asyncio.sleep(0.5)
            await asyncio.sleep(5)  # past the registration burst
            renewed = sum(w.renewed for w in workers)
            cpu = await idle_cpu_pct(cp.proc.pid, WINDOW_S)
            renewals_per_s = (sum(w.renewed for w in workers) - renewed) / WINDOW_S
            after = rss_mib(cp.proc.pid)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ch in channels:
                await ch.close()
    emit("cp_idle_cpu_pct_1k_workers", cpu, "%", renewals_per_s=round(renewals_per_s, 1))
    emit("cp_rss_kib_per_idle_worker", (after - before) * 1024 / WORKERS, "KiB")
