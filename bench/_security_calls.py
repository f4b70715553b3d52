"""The cross-owner probe's call table (see `bench/security.py`, which sets the scene and runs
it): every RPC of every service, called by the attacker against the victim's resources, each
answer compared with the answer to the same call with a made-up id of the same shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tether.v1 import admin_service_pb2 as apb
from tether.v1 import admin_service_pb2_grpc as apb_grpc
from tether.v1 import resources_pb2 as rpb
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as spb_grpc
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wpb_grpc


def _fake(real: str) -> str:
    """A made-up id of the same shape as `real` (same prefix and length)."""
    prefix, _, rest = real.partition("_")
    return f"{prefix}_{'Z' * len(rest)}" if rest else "Z" * len(real)


@dataclass
class Outcome:
    code: str
    reason: str
    text: str  # message, details and response, with the probed id masked


def _outcome_of_error(err: grpc.aio.AioRpcError, masked: list[str]) -> Outcome:
    reason, details = "", []
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for any_detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if any_detail.Unpack(info):
                    reason = info.reason
                    details.append(json.dumps(dict(info.metadata), sort_keys=True))
                bad = error_details_pb2.BadRequest()
                if any_detail.Unpack(bad):
                    details.extend(f"{v.field}:{v.description}" for v in bad.field_violations)
    text = " | ".join([err.details() or "", *details])
    for value in masked:
        text = text.replace(value, "<id>")
    return Outcome(err.code().name, reason, text)


def _outcome_of_response(response: Any, masked: list[str]) -> Outcome:
    text = str(response)
    for value in masked:
        text = text.replace(value, "<id>")
    return Outcome("OK", "", text)


@dataclass
class Probe:
    calls: int = 0
    leaks: list[str] = field(default_factory=list)

    async def compare(
        self, name: str, call: Callable[[str], Awaitable[Any]], real: str, *, ok_allowed: bool = False
    ) -> None:
        """Call with the victim's real id and with a made-up one; the answers must match."""
        outcomes = []
        for value in (real, _fake(real)):
            self.calls += 1
            try:
                response = await call(value)
                outcomes.append(_outcome_of_response(response, [real, _fake(real)]))
            except grpc.aio.AioRpcError as err:
                outcomes.append(_outcome_of_error(err, [real, _fake(real)]))
        got, fake = outcomes
        if got.code == "OK" and not ok_allowed:
            self.leaks.append(f"{name}: succeeded on the victim's resource: {got.text[:200]}")
        elif (got.code, got.reason, got.text) != (fake.code, fake.reason, fake.text):
            self.leaks.append(f"{name}: answers differ: real={got} made-up={fake}")

    async def absent(self, name: str, call: Callable[[], Awaitable[Any]], secrets: list[str]) -> None:
        """A listing must not show any of the victim's ids."""
        self.calls += 1
        try:
            text = str(await call())
        except grpc.aio.AioRpcError as err:
            text = err.details() or ""
        shown = [s for s in secrets if s in text]
        if shown:
            self.leaks.append(f"{name}: shows the victim's {shown}")


async def _drain(call: Any) -> list[Any]:
    return [r async for r in call]


@dataclass(frozen=True)
class Targets:
    """What the attacker probes, the victim's ids, and what it probes with: its own key,
    worker token and worker, and its own session with a queued turn."""

    attacker_key: str
    attacker_token: str
    attacker_worker_id: str
    own_session: str
    own_turn: str
    session: str  # the victim's session: a finished turn, a snapshot, a turn waiting on an approval
    turn: str  # the turn waiting on the approval
    request: str  # the approval
    lease_epoch: int  # of the victim's session
    queued_session: str  # the victim's session whose turn waits for a worker labelled pool=shared
    queued_turn: str
    worker_id: str  # the victim's worker
    token_id: str  # the victim's worker token
    snapshot_id: str


async def call_everything(probe: Probe, target: str, t: Targets) -> None:
    """Every RPC of every service, with the attacker's valid credentials, against `t`."""
    channel = grpc.aio.insecure_channel(target)
    app_md = (("authorization", f"Bearer {t.attacker_key}"),)
    worker_md = (("authorization", f"Bearer {t.attacker_token}"),)
    sessions = spb_grpc.SessionServiceStub(channel)
    admin = apb_grpc.AdminServiceStub(channel)
    workers = wpb_grpc.WorkerServiceStub(channel)

    def unary(method: Any, make: Callable[[str], Any], md: Any = app_md) -> Callable[[str], Awaitable[Any]]:
        return lambda value: method(make(value), metadata=md, timeout=5)

    async def first_events(value: str) -> Any:
        call = sessions.StreamSessionEvents(
            spb.StreamSessionEventsRequest(session_id=value, stop_at_end=True), metadata=app_md, timeout=5
        )
        return [r async for r in call]

    vs, vt, vr, epoch = t.session, t.turn, t.request, t.lease_epoch
    await probe.compare("GetSession", unary(sessions.GetSession, lambda x: spb.GetSessionRequest(session_id=x)), vs)
    await probe.compare(
        "SendInput",
        unary(sessions.SendInput, lambda x: spb.SendInputRequest(session_id=x, input="say pwned")),
        vs,
    )
    await probe.compare("GetTurn", unary(sessions.GetTurn, lambda x: spb.GetTurnRequest(session_id=x, turn_id=vt)), vs)
    await probe.compare(
        "GetTurn(own session, victim turn)",
        unary(sessions.GetTurn, lambda x: spb.GetTurnRequest(session_id=t.own_session, turn_id=x)),
        vt,
    )
    await probe.compare(
        "InterruptTurn", unary(sessions.InterruptTurn, lambda x: spb.InterruptTurnRequest(session_id=x)), vs
    )
    await probe.compare(
        "InterruptTurn(queued)",
        unary(sessions.InterruptTurn, lambda x: spb.InterruptTurnRequest(session_id=x, turn_id=t.queued_turn)),
        t.queued_session,
    )
    await probe.compare("StreamSessionEvents", first_events, vs)
    await probe.compare("GetSnapshot", unary(sessions.GetSnapshot, lambda x: spb.GetSnapshotRequest(session_id=x)), vs)
    await probe.compare(
        "CreateSnapshot", unary(sessions.CreateSnapshot, lambda x: spb.CreateSnapshotRequest(session_id=x)), vs
    )
    await probe.compare(
        "ArchiveSession", unary(sessions.ArchiveSession, lambda x: spb.ArchiveSessionRequest(session_id=x)), vs
    )
    await probe.compare(
        "DeleteSession", unary(sessions.DeleteSession, lambda x: spb.DeleteSessionRequest(session_id=x)), vs
    )
    await probe.compare(
        "RestoreSession", unary(sessions.RestoreSession, lambda x: spb.RestoreSessionRequest(session_id=x)), vs
    )
    await probe.compare(
        "RestoreSession(own session onto victim worker)",
        unary(sessions.RestoreSession, lambda x: spb.RestoreSessionRequest(session_id=t.own_session, worker_id=x)),
        t.worker_id,
    )
    await probe.compare(
        "RevertSession(victim turn)",
        unary(sessions.RevertSession, lambda x: spb.RevertSessionRequest(session_id=vs, turn_id=x)),
        vt,
    )
    await probe.compare(
        "RevertSession(own session, victim turn)",
        unary(sessions.RevertSession, lambda x: spb.RevertSessionRequest(session_id=t.own_session, turn_id=x)),
        vt,
    )
    await probe.compare("ListTurns", unary(sessions.ListTurns, lambda x: spb.ListTurnsRequest(session_id=x)), vs)
    await probe.compare(
        "UpdateSession",
        unary(
            sessions.UpdateSession,
            lambda x: spb.UpdateSessionRequest(session=rpb.Session(session_id=x, title="pwned")),
        ),
        vs,
    )

    async def export(value: str) -> Any:
        call = sessions.ExportSession(spb.ExportSessionRequest(session_id=value), metadata=app_md, timeout=5)
        return [r async for r in call]

    await probe.compare("ExportSession", export, vs)
    await probe.compare(
        "DeleteSession(scheduled)",
        unary(
            sessions.DeleteSession,
            lambda x: spb.DeleteSessionRequest(session_id=x, delete_after=duration_pb2.Duration(seconds=60)),
        ),
        vs,
    )
    await probe.compare(
        "CancelSessionDeletion",
        unary(sessions.CancelSessionDeletion, lambda x: spb.CancelSessionDeletionRequest(session_id=x)),
        vs,
    )

    async def import_keeping(value: str) -> Any:
        session = json.dumps({"session": {"session_id": value, "runtime": "script"}})
        end = json.dumps({"end": {"turns": 0, "events": 0, "requests": 0, "snapshots": 0}})
        bundle = f'{{"tether_bundle": 1}}\n{session}\n{end}\n'.encode()
        request = spb.ImportSessionRequest(chunk=bundle, keep_session_id=True)
        return await sessions.ImportSession(iter([request]), metadata=app_md, timeout=5)

    await probe.compare("ImportSession(keep the victim's id)", import_keeping, vs)
    await probe.compare(
        "UnarchiveSession",
        unary(sessions.UnarchiveSession, lambda x: spb.UnarchiveSessionRequest(session_id=x)),
        vs,
    )
    await probe.compare("ForkSession", unary(sessions.ForkSession, lambda x: spb.ForkSessionRequest(session_id=x)), vs)
    await probe.compare(
        "ForkSession(victim turn)",
        unary(sessions.ForkSession, lambda x: spb.ForkSessionRequest(session_id=vs, turn_id=x)),
        vt,
    )
    await probe.compare(
        "ForkSession(own session, victim turn)",
        unary(sessions.ForkSession, lambda x: spb.ForkSessionRequest(session_id=t.own_session, turn_id=x)),
        vt,
    )
    await probe.compare(
        "RespondToRequest",
        unary(
            sessions.RespondToRequest,
            lambda x: spb.RespondToRequestRequest(session_id=x, request_id=vr, response_json='{"decision": "accept"}'),
        ),
        vs,
    )
    await probe.compare(
        "RespondToRequest(own session, victim request)",
        unary(
            sessions.RespondToRequest,
            lambda x: spb.RespondToRequestRequest(
                session_id=t.own_session, request_id=x, response_json='{"decision": "accept"}'
            ),
        ),
        vr,
    )
    await probe.compare(
        "ListRequests", unary(sessions.ListRequests, lambda x: spb.ListRequestsRequest(session_id=x)), vs
    )
    victim_ids = [vs, t.queued_session, vt, vr, t.worker_id, t.token_id, t.snapshot_id]
    await probe.absent(
        "ListSessions",
        lambda: sessions.ListSessions(spb.ListSessionsRequest(), metadata=app_md, timeout=5),
        victim_ids,
    )
    await probe.absent(
        "ListSessions(the victim's labels, by activity)",
        lambda: sessions.ListSessions(
            spb.ListSessionsRequest(labels={"team": "victim"}, order_by="last_activity_time desc"),
            metadata=app_md,
            timeout=5,
        ),
        victim_ids,
    )
    await probe.absent(
        "ListWorkers",
        lambda: admin.ListWorkers(apb.ListWorkersRequest(), metadata=app_md, timeout=5),
        victim_ids,
    )
    await probe.absent(
        "ListWorkerTokens",
        lambda: admin.ListWorkerTokens(apb.ListWorkerTokensRequest(), metadata=app_md, timeout=5),
        victim_ids,
    )
    await probe.compare(
        "PurgeOwnerData(the victim)",
        lambda value: _drain(admin.PurgeOwnerData(apb.PurgeOwnerDataRequest(owner=value), metadata=app_md, timeout=5)),
        "victim",
    )
    await probe.compare(
        "DrainWorker",
        unary(admin.DrainWorker, lambda x: apb.DrainWorkerRequest(worker_id=x)),
        t.worker_id,
    )
    await probe.compare(
        "RevokeWorkerToken",
        unary(admin.RevokeWorkerToken, lambda x: apb.RevokeWorkerTokenRequest(token_id=x)),
        t.token_id,
    )

    # WorkerService, with the attacker's own valid worker token.
    wid = t.attacker_worker_id
    await probe.compare(
        "Register(as the victim's worker)",
        unary(
            workers.Register,
            lambda x: wpb.RegisterRequest(worker_id=x, runtimes=["script"], slots=1),
            worker_md,
        ),
        t.worker_id,
    )
    await probe.compare(
        "Heartbeat(as the victim's worker)",
        unary(workers.Heartbeat, lambda x: wpb.HeartbeatRequest(worker_id=x, registration_id="reg_x"), worker_md),
        t.worker_id,
    )
    reg = await workers.Register(
        wpb.RegisterRequest(worker_id=wid, runtimes=["script"], slots=4, labels={"pool": "shared"}),
        metadata=worker_md,
        timeout=5,
    )

    async def renew(value: str) -> Any:
        response = await workers.Heartbeat(
            wpb.HeartbeatRequest(
                worker_id=wid,
                registration_id=reg.registration_id,
                leases=[wpb.LeaseRef(session_id=value, lease_epoch=epoch)],
            ),
            metadata=worker_md,
            timeout=5,
        )
        return response.lost_leases  # the expiry time differs call to call

    await probe.compare("Heartbeat(renew the victim's lease)", renew, vs, ok_allowed=True)

    async def stream_events(value: str) -> Any:
        call = workers.StreamEvents(metadata=worker_md, timeout=5)
        await call.write(
            wpb.StreamEventsRequest(
                worker_id=wid,
                session_id=value,
                lease_epoch=epoch,
                events=[wpb.WorkerEvent(worker_seq=1, turn_id=vt)],
            )
        )
        await call.done_writing()
        return [r async for r in call]

    async def stream_worker_events(value: str) -> Any:
        call = workers.StreamWorkerEvents(metadata=worker_md, timeout=5)
        batch = wpb.SessionEventBatch(
            session_id=value, lease_epoch=epoch, events=[wpb.WorkerEvent(worker_seq=1, turn_id=vt)]
        )
        await call.write(wpb.StreamWorkerEventsRequest(worker_id=wid, batches=[batch]))
        await call.done_writing()
        # A refusal comes in-band, so the call itself ends OK: the answers (an ack, had the
        # batch been stored, or the refusal's status) must be the same for both ids.
        return [r async for r in call]

    async def resume(value: str) -> Any:
        call = workers.Resume(
            wpb.ResumeRequest(worker_id=wid, session_id=value, lease_epoch=epoch), metadata=worker_md, timeout=5
        )
        return [r async for r in call]

    async def snapshot_upload(value: str) -> Any:
        async def chunks():
            yield wpb.SnapshotRequest(worker_id=wid, session_id=value, lease_epoch=epoch, seq=1, request_id="")

        return await workers.Snapshot(chunks(), metadata=worker_md, timeout=5)

    await probe.compare("StreamEvents(victim session)", stream_events, vs)
    await probe.compare("StreamWorkerEvents(victim session)", stream_worker_events, vs, ok_allowed=True)
    await probe.compare("Resume(victim session)", resume, vs)
    await probe.compare("Snapshot(victim session)", snapshot_upload, vs)
    await _lease_probe(
        probe,
        workers,
        worker_md,
        wid,
        reg.registration_id,
        vs,
        epoch,
        t.queued_session,
        t.queued_turn,
        t.own_session,
        t.own_turn,
    )
    await channel.close()


async def _lease_probe(
    probe: Probe,
    workers: Any,
    md: Any,
    wid: str,
    registration_id: str,
    victim_session: str,
    epoch: int,
    queued_session: str,
    queued_turn: str,
    own_session: str,
    own_turn: str,
) -> None:
    """On its own Lease stream, the attacker's worker claims the victim's lease and turn; it
    must be offered its own queued turn and never the victim's."""
    requests: asyncio.Queue[Any] = asyncio.Queue()

    async def outgoing():
        while (item := await requests.get()) is not None:
            yield item

    call = workers.Lease(outgoing(), metadata=md, timeout=30)
    requests.put_nowait(
        wpb.LeaseRequest(
            open=wpb.LeaseOpen(
                worker_id=wid,
                registration_id=registration_id,
                leases=[wpb.LeaseRef(session_id=victim_session, lease_epoch=epoch)],
            )
        )
    )
    first = await call.read()
    probe.calls += 1
    if [ref.session_id for ref in first.opened.lost_leases] != [victim_session]:
        probe.leaks.append(f"Lease open: the victim's lease was not reported lost: {first}")
    # Claim the victim's queued turn and its held lease, and release its lease.
    for msg in (
        wpb.LeaseRequest(accept=wpb.AcceptOffer(session_id=queued_session, turn_id=queued_turn, lease_epoch=1)),
        wpb.LeaseRequest(accept=wpb.AcceptOffer(session_id=victim_session, turn_id="", lease_epoch=epoch + 1)),
        wpb.LeaseRequest(release=wpb.ReleaseLease(session_id=victim_session, lease_epoch=epoch, reason="attacker")),
        wpb.LeaseRequest(reject=wpb.RejectOffer(session_id=victim_session, turn_id="", reason="attacker")),
    ):
        probe.calls += 1
        requests.put_nowait(msg)
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def read_all() -> None:  # cancelling a read would cancel the call: read in one task
        while (msg := await call.read()) is not grpc.aio.EOF:
            received.put_nowait(msg)

    reader = asyncio.create_task(read_all())
    offered_own = False
    deadline = asyncio.get_running_loop().time() + 3.0
    try:
        while asyncio.get_running_loop().time() < deadline and not reader.done():
            try:
                async with asyncio.timeout(0.3):
                    msg = await received.get()
            except TimeoutError:
                requests.put_nowait(wpb.LeaseRequest(renew=wpb.RenewLeases()))
                continue
            kind = msg.WhichOneof("kind")
            body = getattr(msg, kind)
            session = getattr(body, "session_id", "")
            if kind == "offer" and body.session_id == own_session and body.turn_id == own_turn:
                offered_own = True
            elif session and session != own_session and kind != "revoked":
                probe.leaks.append(f"Lease stream: got {kind} for another owner's session {session}")
            elif kind == "revoked" and body.reason != "the offer is no longer valid":
                probe.leaks.append(f"Lease stream: a claim was answered differently: {body}")
    finally:
        requests.put_nowait(None)
        call.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    if not offered_own:
        probe.leaks.append(
            "Lease stream: the attacker's worker was not offered its own turn (the probe proved nothing)"
        )
