"""Typed views of the gRPC stubs the clients call.

protoc types the messages (`*_pb2.pyi`) but not the stubs (`*_pb2_grpc.py`), and
types-grpcio-health-checking declares `HealthStub` without its methods. The protocols here say
what each stub method is, a `grpc.aio` multicallable from its request to its response, so every
call the clients make is checked. The builders below return the generated stubs as they are
(same method paths, same serializers) under these protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import grpc
from grpc.aio import StreamUnaryMultiCallable, UnaryStreamMultiCallable, UnaryUnaryMultiCallable
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tether.v1 import admin_service_pb2 as admin_pb
from tether.v1 import admin_service_pb2_grpc as admin_pb_grpc
from tether.v1 import session_service_pb2 as pb
from tether.v1 import session_service_pb2_grpc as pb_grpc

__all__ = ["AdminServiceStub", "HealthStub", "SessionServiceStub", "admin_stub", "health_stub", "session_stub"]


class SessionServiceStub(Protocol):
    """`tether.v1.SessionService` as the client calls it."""

    CreateSession: UnaryUnaryMultiCallable[pb.CreateSessionRequest, pb.CreateSessionResponse]
    GetSession: UnaryUnaryMultiCallable[pb.GetSessionRequest, pb.GetSessionResponse]
    ListSessions: UnaryUnaryMultiCallable[pb.ListSessionsRequest, pb.ListSessionsResponse]
    UpdateSession: UnaryUnaryMultiCallable[pb.UpdateSessionRequest, pb.UpdateSessionResponse]
    SendInput: UnaryUnaryMultiCallable[pb.SendInputRequest, pb.SendInputResponse]
    GetTurn: UnaryUnaryMultiCallable[pb.GetTurnRequest, pb.GetTurnResponse]
    ListTurns: UnaryUnaryMultiCallable[pb.ListTurnsRequest, pb.ListTurnsResponse]
    InterruptTurn: UnaryUnaryMultiCallable[pb.InterruptTurnRequest, pb.InterruptTurnResponse]
    StreamSessionEvents: UnaryStreamMultiCallable[pb.StreamSessionEventsRequest, pb.StreamSessionEventsResponse]
    GetSnapshot: UnaryUnaryMultiCallable[pb.GetSnapshotRequest, pb.GetSnapshotResponse]
    CreateSnapshot: UnaryUnaryMultiCallable[pb.CreateSnapshotRequest, pb.CreateSnapshotResponse]
    ArchiveSession: UnaryUnaryMultiCallable[pb.ArchiveSessionRequest, pb.ArchiveSessionResponse]
    UnarchiveSession: UnaryUnaryMultiCallable[pb.UnarchiveSessionRequest, pb.UnarchiveSessionResponse]
    DeleteSession: UnaryUnaryMultiCallable[pb.DeleteSessionRequest, pb.DeleteSessionResponse]
    RestoreSession: UnaryUnaryMultiCallable[pb.RestoreSessionRequest, pb.RestoreSessionResponse]
    ForkSession: UnaryUnaryMultiCallable[pb.ForkSessionRequest, pb.ForkSessionResponse]
    RevertSession: UnaryUnaryMultiCallable[pb.RevertSessionRequest, pb.RevertSessionResponse]
    ExportSession: UnaryStreamMultiCallable[pb.ExportSessionRequest, pb.ExportSessionResponse]
    ImportSession: StreamUnaryMultiCallable[pb.ImportSessionRequest, pb.ImportSessionResponse]
    CancelSessionDeletion: UnaryUnaryMultiCallable[pb.CancelSessionDeletionRequest, pb.CancelSessionDeletionResponse]
    RespondToRequest: UnaryUnaryMultiCallable[pb.RespondToRequestRequest, pb.RespondToRequestResponse]
    ListRequests: UnaryUnaryMultiCallable[pb.ListRequestsRequest, pb.ListRequestsResponse]


class AdminServiceStub(Protocol):
    """`tether.v1.AdminService` as the client calls it."""

    ListWorkers: UnaryUnaryMultiCallable[admin_pb.ListWorkersRequest, admin_pb.ListWorkersResponse]
    DrainWorker: UnaryUnaryMultiCallable[admin_pb.DrainWorkerRequest, admin_pb.DrainWorkerResponse]
    CreatePairingCode: UnaryUnaryMultiCallable[admin_pb.CreatePairingCodeRequest, admin_pb.CreatePairingCodeResponse]
    ListWorkerTokens: UnaryUnaryMultiCallable[admin_pb.ListWorkerTokensRequest, admin_pb.ListWorkerTokensResponse]
    RevokeWorkerToken: UnaryUnaryMultiCallable[admin_pb.RevokeWorkerTokenRequest, admin_pb.RevokeWorkerTokenResponse]
    PurgeOwnerData: UnaryStreamMultiCallable[admin_pb.PurgeOwnerDataRequest, admin_pb.PurgeOwnerDataResponse]


class HealthStub(Protocol):
    """`grpc.health.v1.Health` as the client calls it."""

    Check: UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


# The generated constructors take an unannotated `channel`; these give them their types.
_SESSION_STUB: Callable[[grpc.aio.Channel], SessionServiceStub] = pb_grpc.SessionServiceStub
_ADMIN_STUB: Callable[[grpc.aio.Channel], AdminServiceStub] = admin_pb_grpc.AdminServiceStub


def session_stub(channel: grpc.aio.Channel) -> SessionServiceStub:
    return _SESSION_STUB(channel)


def admin_stub(channel: grpc.aio.Channel) -> AdminServiceStub:
    return _ADMIN_STUB(channel)


def health_stub(channel: grpc.aio.Channel) -> HealthStub:
    # types-grpcio-health-checking declares HealthStub without `Check`, which it has at run time.
    return cast(HealthStub, health_pb2_grpc.HealthStub(channel))
