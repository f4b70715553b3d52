"""AdminService: operators' view of workers, and draining one."""

from __future__ import annotations

import grpc

from tether.v1 import admin_service_pb2 as apb

from ..domain.errors import InvalidArgument
from ..domain.hub import Hub, WorkerStatus
from . import _validate as v
from ._convert import ts
from ._errors import translate


def _status_pb(st: WorkerStatus) -> apb.WorkerStatus:
    info = st.info
    return apb.WorkerStatus(
        worker_id=info.worker_id,
        name=info.name,
        runtimes=info.runtimes,
        labels=info.labels,
        slots=info.slots,
        running_turns=st.running_turns,
        held_sessions=st.held_sessions,
        connected=st.connected,
        draining=st.draining,
        register_time=ts(info.registered_at_us),
        version=info.version,
    )


class AdminService:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def ListWorkers(self, request: apb.ListWorkersRequest, context: grpc.aio.ServicerContext) -> apb.ListWorkersResponse:
        async with translate(context, "ListWorkers"):
            return apb.ListWorkersResponse(workers=[_status_pb(st) for st in self._hub.worker_statuses()])

    async def DrainWorker(self, request: apb.DrainWorkerRequest, context: grpc.aio.ServicerContext) -> apb.DrainWorkerResponse:
        async with translate(context, "DrainWorker"):
            worker_id = v.required("worker_id", request.worker_id)
            grace_s = None
            if request.HasField("grace"):
                grace_s = request.grace.seconds + request.grace.nanos / 1e9
                if grace_s < 0:
                    raise InvalidArgument("grace", "must not be negative")
            status = self._hub.drain_worker(worker_id, grace_s)
            return apb.DrainWorkerResponse(worker=_status_pb(status))
