"""Cross-owner probe: an attacker owner calls every RPC of every service against a victim
owner's resources, and nothing may leak.

Two owners share one control plane. The victim has a worker, a session with a finished turn
and a snapshot, a turn waiting on an approval (a pending request), a second session whose turn
waits in the queue for a worker labelled pool=shared, a pairing code and a worker token. The
attacker has its own API key, its own worker token and worker (also labelled pool=shared) and
its own session. With its valid credentials the attacker then reads, writes, streams, claims,
resumes, snapshots and answers the victim's resources by their real ids.

A call leaks when it succeeds, or when its answer differs from the answer to the same call
with a made-up id of the same shape (status, reason, message and details, with the id itself
masked): then the caller learnt that the resource exists. The attacker's worker must also
never be offered the victim's queued turn (while it is offered its own), and the victim's
stored rows must be byte-for-byte the same afterwards.

Prints `security_cross_owner_calls` and `security_cross_owner_leaks` (must be 0).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tether import sdk
from tether.cli.conformance import until
from tether.control_plane import ControlPlane, Settings, Timings
from tether.execution_worker import Worker, WorkerSettings
from tether.execution_worker._credentials import pair
from tether.v1 import admin_service_pb2 as apb
from tether.v1 import admin_service_pb2_grpc as apb_grpc
from tether.v1 import resources_pb2 as rpb
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as spb_grpc
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wpb_grpc

TIMINGS = Timings(
    heartbeat_interval_s=0.2,
    liveness_timeout_s=1.0,
    worker_dead_grace_s=0.5,
    lease_ttl_s=1.5,
    sticky_timeout_s=1.0,
    offer_timeout_s=2.0,
    reconnect_backoff_initial_s=0.05,
    reconnect_backoff_max_s=0.5,
    # The victim's queued turn says why it waits at once, not 2 s later in the middle of the
    # probe, so its stored rows are settled before they are read.
    waiting_notice_s=0.0,
)
_VICTIM_TABLES = {
    "sessions": "session_id",
    "turns": "session_id",
    "events": "session_id",
    "snapshots": "session_id",
    "requests": "session_id",
    "leases": "session_id",
}


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


def _rows(db: pathlib.Path, session_ids: list[str]) -> dict[str, list[tuple]]:
    """Every stored row of the victim's sessions, and every credential row."""
    conn = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(session_ids))
        out = {
            table: sorted(conn.execute(f"SELECT * FROM {table} WHERE {col} IN ({marks})", session_ids).fetchall())
            for table, col in _VICTIM_TABLES.items()
        }
        for table in ("api_keys", "worker_tokens", "pairing_codes"):
            out[table] = sorted(conn.execute(f"SELECT * FROM {table}").fetchall())
        out["workers"] = sorted(conn.execute("SELECT * FROM workers WHERE owner_id = 'victim'").fetchall())
        return out
    finally:
        conn.close()


async def run_probe(root: pathlib.Path) -> Probe:
    db = root / "security.db"
    async with ControlPlane(Settings(port=0, db=str(db), timings=TIMINGS)) as cp:
        target = f"127.0.0.1:{cp.port}"
        victim_key = await cp.create_api_key("owner", "victim")
        attacker_key = await cp.create_api_key("owner", "attacker")
        victim = sdk.AsyncClient(target, api_key=victim_key)
        attacker = sdk.AsyncClient(target, api_key=attacker_key)
        victim_creds = await pair(target, (await victim.create_pairing_code()).code, "victim-worker")
        attacker_creds = await pair(target, (await attacker.create_pairing_code()).code, "attacker-worker")
        pending_code = await victim.create_pairing_code()  # stays unused: the probe must not see it
        worker = Worker(
            WorkerSettings(
                workdir=root / "victim-worker",
                control_plane=target,
                runtimes=("script",),
                slots=4,
                worker_id=victim_creds.worker_id,
                token=victim_creds.token,
                snapshot_every_turns=0,
            )
        )
        worker_task = asyncio.create_task(worker.run())
        probe = Probe()
        try:
            # The victim's resources.
            done = await victim.create_session("script", labels={"team": "victim"})
            first = await victim.send_input(done.session_id, "say secret-victim-output")
            await until(lambda: _ended(victim, done.session_id, first.turn_id), 20, "the victim's first turn")
            snapshot = await victim.create_snapshot(done.session_id)
            asking = await victim.send_input(done.session_id, "approve rm -rf /victim")
            requests: list[sdk.PendingRequest] = []

            async def opened() -> bool:
                requests[:] = await victim.list_requests(done.session_id)
                return bool(requests)

            await until(opened, 20, "the victim's approval request")
            queued_session = await victim.create_session("script", worker_selector={"pool": "shared"})
            queued = await victim.send_input(queued_session.session_id, "say never-offered-to-the-attacker")

            async def says_why() -> bool:
                events = victim.stream_events(queued_session.session_id, stop_at_end=True)
                return any([e.kind == sdk.EventKind.TURN_WAITING async for e in events])

            # The queued turn says why it waits with a turn_waiting event, committed a moment
            # after the input: the rows are read once it is stored, so only what the probe
            # causes can change them.
            await until(says_why, 20, "the victim's queued turn to say why it waits")
            victim_sessions = [done.session_id, queued_session.session_id]
            before = _rows(db, victim_sessions)

            # The attacker's own session, queued for the shared pool.
            own = await attacker.create_session("script", worker_selector={"pool": "shared"})
            own_turn = await attacker.send_input(own.session_id, "say mine")

            channel = grpc.aio.insecure_channel(target)
            app_md = (("authorization", f"Bearer {attacker_key}"),)
            worker_md = (("authorization", f"Bearer {attacker_creds.token}"),)
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

            vs, vt, vr = done.session_id, asking.turn_id, requests[0].request_id
            epoch = (await victim.get_session(vs)).lease_epoch
            await probe.compare(
                "GetSession", unary(sessions.GetSession, lambda x: spb.GetSessionRequest(session_id=x)), vs
            )
            await probe.compare(
                "SendInput",
                unary(sessions.SendInput, lambda x: spb.SendInputRequest(session_id=x, input="say pwned")),
                vs,
            )
            await probe.compare(
                "GetTurn", unary(sessions.GetTurn, lambda x: spb.GetTurnRequest(session_id=x, turn_id=vt)), vs
            )
            await probe.compare(
                "GetTurn(own session, victim turn)",
                unary(sessions.GetTurn, lambda x: spb.GetTurnRequest(session_id=own.session_id, turn_id=x)),
                vt,
            )
            await probe.compare(
                "InterruptTurn", unary(sessions.InterruptTurn, lambda x: spb.InterruptTurnRequest(session_id=x)), vs
            )
            await probe.compare(
                "InterruptTurn(queued)",
                unary(sessions.InterruptTurn, lambda x: spb.InterruptTurnRequest(session_id=x, turn_id=queued.turn_id)),
                queued_session.session_id,
            )
            await probe.compare("StreamSessionEvents", first_events, vs)
            await probe.compare(
                "GetSnapshot", unary(sessions.GetSnapshot, lambda x: spb.GetSnapshotRequest(session_id=x)), vs
            )
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
                unary(
                    sessions.RestoreSession, lambda x: spb.RestoreSessionRequest(session_id=own.session_id, worker_id=x)
                ),
                victim_creds.worker_id,
            )
            await probe.compare(
                "RevertSession(victim turn)",
                unary(sessions.RevertSession, lambda x: spb.RevertSessionRequest(session_id=vs, turn_id=x)),
                vt,
            )
            await probe.compare(
                "RevertSession(own session, victim turn)",
                unary(sessions.RevertSession, lambda x: spb.RevertSessionRequest(session_id=own.session_id, turn_id=x)),
                vt,
            )
            await probe.compare(
                "ListTurns", unary(sessions.ListTurns, lambda x: spb.ListTurnsRequest(session_id=x)), vs
            )
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
            await probe.compare(
                "ForkSession", unary(sessions.ForkSession, lambda x: spb.ForkSessionRequest(session_id=x)), vs
            )
            await probe.compare(
                "ForkSession(victim turn)",
                unary(sessions.ForkSession, lambda x: spb.ForkSessionRequest(session_id=vs, turn_id=x)),
                vt,
            )
            await probe.compare(
                "ForkSession(own session, victim turn)",
                unary(sessions.ForkSession, lambda x: spb.ForkSessionRequest(session_id=own.session_id, turn_id=x)),
                vt,
            )
            await probe.compare(
                "RespondToRequest",
                unary(
                    sessions.RespondToRequest,
                    lambda x: spb.RespondToRequestRequest(
                        session_id=x, request_id=vr, response_json='{"decision": "accept"}'
                    ),
                ),
                vs,
            )
            await probe.compare(
                "RespondToRequest(own session, victim request)",
                unary(
                    sessions.RespondToRequest,
                    lambda x: spb.RespondToRequestRequest(
                        session_id=own.session_id, request_id=x, response_json='{"decision": "accept"}'
                    ),
                ),
                vr,
            )
            await probe.compare(
                "ListRequests", unary(sessions.ListRequests, lambda x: spb.ListRequestsRequest(session_id=x)), vs
            )
            victim_ids = [*victim_sessions, vt, vr, victim_creds.worker_id, victim_creds.token_id, snapshot.snapshot_id]
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
                lambda value: _drain(
                    admin.PurgeOwnerData(apb.PurgeOwnerDataRequest(owner=value), metadata=app_md, timeout=5)
                ),
                "victim",
            )
            await probe.compare(
                "DrainWorker",
                unary(admin.DrainWorker, lambda x: apb.DrainWorkerRequest(worker_id=x)),
                victim_creds.worker_id,
            )
            await probe.compare(
                "RevokeWorkerToken",
                unary(admin.RevokeWorkerToken, lambda x: apb.RevokeWorkerTokenRequest(token_id=x)),
                victim_creds.token_id,
            )

            # WorkerService, with the attacker's own valid worker token.
            wid = attacker_creds.worker_id
            await probe.compare(
                "Register(as the victim's worker)",
                unary(
                    workers.Register,
                    lambda x: wpb.RegisterRequest(worker_id=x, runtimes=["script"], slots=1),
                    worker_md,
                ),
                victim_creds.worker_id,
            )
            await probe.compare(
                "Heartbeat(as the victim's worker)",
                unary(
                    workers.Heartbeat, lambda x: wpb.HeartbeatRequest(worker_id=x, registration_id="reg_x"), worker_md
                ),
                victim_creds.worker_id,
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
                queued_session.session_id,
                queued.turn_id,
                own.session_id,
                own_turn.turn_id,
            )
            await channel.close()

            after = _rows(db, victim_sessions)
            for table in before:
                if before[table] != after[table]:
                    probe.leaks.append(f"the victim's {table} rows changed")
            if pending_code.code in str(after) or victim_creds.token in str(after):
                probe.leaks.append("a secret is stored in the clear")
        finally:
            await worker.close()
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
            await victim.close()
            await attacker.close()
    return probe


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


async def _ended(client: sdk.AsyncClient, session_id: str, turn_id: str) -> bool:
    return (await client.get_turn(session_id, turn_id)).state.name in ("COMPLETED", "FAILED", "INTERRUPTED")


async def main() -> bool:
    with tempfile.TemporaryDirectory(prefix="tether-security-") as tmp:
        probe = await run_probe(pathlib.Path(tmp))
    print(json.dumps({"metric": "security_cross_owner_calls", "value": probe.calls, "unit": "calls"}))
    print(json.dumps({"metric": "security_cross_owner_leaks", "value": len(probe.leaks), "unit": "calls"}))
    for leak in probe.leaks:
        print(f"leak: {leak}", file=__import__("sys").stderr)
    return not probe.leaks
