import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tether.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PairRequest(_message.Message):
    __slots__ = ("code", "name")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    code: str
    name: str
    def __init__(self, code: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class PairResponse(_message.Message):
    __slots__ = ("token", "token_id", "worker_id", "owner")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    worker_id: str
    owner: str
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("worker_id", "name", "runtimes", "slots", "labels", "version", "features", "output_schema_runtimes", "runtime_portability")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RuntimePortabilityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _resources_pb2.RuntimePortability
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_resources_pb2.RuntimePortability, str]] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_PORTABILITY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    name: str
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    labels: _containers.ScalarMap[str, str]
    version: str
    features: _containers.RepeatedScalarFieldContainer[str]
    output_schema_runtimes: _containers.RepeatedScalarFieldContainer[str]
    runtime_portability: _containers.ScalarMap[str, _resources_pb2.RuntimePortability]
    def __init__(self, worker_id: _Optional[str] = ..., name: _Optional[str] = ..., runtimes: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., output_schema_runtimes: _Optional[_Iterable[str]] = ..., runtime_portability: _Optional[_Mapping[str, _resources_pb2.RuntimePortability]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("worker_id", "registration_id", "heartbeat_interval", "lease_ttl", "offer_timeout", "reconnect_backoff_initial", "reconnect_backoff_max", "max_events_per_message", "liveness_timeout", "worker_dead_grace", "idle_heartbeat_interval", "lease_digests", "max_message_bytes", "snapshot_deltas")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    OFFER_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_BACKOFF_INITIAL_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_BACKOFF_MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    WORKER_DEAD_GRACE_FIELD_NUMBER: _ClassVar[int]
    IDLE_HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DELTAS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    registration_id: str
    heartbeat_interval: _duration_pb2.Duration
    lease_ttl: _duration_pb2.Duration
    offer_timeout: _duration_pb2.Duration
    reconnect_backoff_initial: _duration_pb2.Duration
    reconnect_backoff_max: _duration_pb2.Duration
    max_events_per_message: int
    liveness_timeout: _duration_pb2.Duration
    worker_dead_grace: _duration_pb2.Duration
    idle_heartbeat_interval: _duration_pb2.Duration
    lease_digests: bool
    max_message_bytes: int
    snapshot_deltas: bool
    def __init__(self, worker_id: _Optional[str] = ..., registration_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., offer_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reconnect_backoff_initial: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reconnect_backoff_max: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_events_per_message: _Optional[int] = ..., liveness_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., worker_dead_grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idle_heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_digests: _Optional[bool] = ..., max_message_bytes: _Optional[int] = ..., snapshot_deltas: _Optional[bool] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "registration_id", "running_turns", "leases")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TURNS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    registration_id: str
    running_turns: int
    leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    def __init__(self, worker_id: _Optional[str] = ..., registration_id: _Optional[str] = ..., running_turns: _Optional[int] = ..., leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_expire_time", "lost_leases", "drain")
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LOST_LEASES_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    lease_expire_time: _timestamp_pb2.Timestamp
    lost_leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    drain: bool
    def __init__(self, lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lost_leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ..., drain: _Optional[bool] = ...) -> None: ...

class LeaseRef(_message.Message):
    __slots__ = ("session_id", "lease_epoch")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_epoch: int
    def __init__(self, session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("open", "accept", "reject", "renew", "release", "draining")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    open: LeaseOpen
    accept: AcceptOffer
    reject: RejectOffer
    renew: RenewLeases
    release: ReleaseLease
    draining: DrainStarted
    def __init__(self, open: _Optional[_Union[LeaseOpen, _Mapping]] = ..., accept: _Optional[_Union[AcceptOffer, _Mapping]] = ..., reject: _Optional[_Union[RejectOffer, _Mapping]] = ..., renew: _Optional[_Union[RenewLeases, _Mapping]] = ..., release: _Optional[_Union[ReleaseLease, _Mapping]] = ..., draining: _Optional[_Union[DrainStarted, _Mapping]] = ...) -> None: ...

class LeaseOpen(_message.Message):
    __slots__ = ("worker_id", "registration_id", "leases", "turn_ids")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    TURN_IDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    registration_id: str
    leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    turn_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., registration_id: _Optional[str] = ..., leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ..., turn_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AcceptOffer(_message.Message):
    __slots__ = ("session_id", "turn_id", "lease_epoch")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    lease_epoch: int
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ...) -> None: ...

class RejectOffer(_message.Message):
    __slots__ = ("session_id", "turn_id", "lease_epoch", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    lease_epoch: int
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RenewLeases(_message.Message):
    __slots__ = ("leases", "running_turns", "held_digest")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TURNS_FIELD_NUMBER: _ClassVar[int]
    HELD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    running_turns: int
    held_digest: LeaseDigest
    def __init__(self, leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ..., running_turns: _Optional[int] = ..., held_digest: _Optional[_Union[LeaseDigest, _Mapping]] = ...) -> None: ...

class LeaseDigest(_message.Message):
    __slots__ = ("count", "xor")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    XOR_FIELD_NUMBER: _ClassVar[int]
    count: int
    xor: int
    def __init__(self, count: _Optional[int] = ..., xor: _Optional[int] = ...) -> None: ...

class ReleaseLease(_message.Message):
    __slots__ = ("session_id", "lease_epoch", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_epoch: int
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class DrainStarted(_message.Message):
    __slots__ = ("deadline",)
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    deadline: _timestamp_pb2.Timestamp
    def __init__(self, deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("opened", "offer", "granted", "interrupt", "revoked", "snapshot", "drain", "renewed", "answered")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    opened: LeaseOpened
    offer: Offer
    granted: OfferGranted
    interrupt: InterruptRequested
    revoked: LeaseRevoked
    snapshot: SnapshotRequested
    drain: DrainRequested
    renewed: LeasesRenewed
    answered: RequestAnswered
    def __init__(self, opened: _Optional[_Union[LeaseOpened, _Mapping]] = ..., offer: _Optional[_Union[Offer, _Mapping]] = ..., granted: _Optional[_Union[OfferGranted, _Mapping]] = ..., interrupt: _Optional[_Union[InterruptRequested, _Mapping]] = ..., revoked: _Optional[_Union[LeaseRevoked, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotRequested, _Mapping]] = ..., drain: _Optional[_Union[DrainRequested, _Mapping]] = ..., renewed: _Optional[_Union[LeasesRenewed, _Mapping]] = ..., answered: _Optional[_Union[RequestAnswered, _Mapping]] = ...) -> None: ...

class LeaseOpened(_message.Message):
    __slots__ = ("worker_id", "lost_leases")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LOST_LEASES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    lost_leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    def __init__(self, worker_id: _Optional[str] = ..., lost_leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("session_id", "turn_id", "input", "runtime", "lease_epoch", "resume_required", "last_seq", "accept_deadline", "restore_only", "output_schema", "trace_context", "granted")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESUME_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_ONLY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    input: str
    runtime: str
    lease_epoch: int
    resume_required: bool
    last_seq: int
    accept_deadline: _timestamp_pb2.Timestamp
    restore_only: bool
    output_schema: str
    trace_context: _containers.ScalarMap[str, str]
    granted: OfferGranted
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., input: _Optional[str] = ..., runtime: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., resume_required: _Optional[bool] = ..., last_seq: _Optional[int] = ..., accept_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., restore_only: _Optional[bool] = ..., output_schema: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., granted: _Optional[_Union[OfferGranted, _Mapping]] = ...) -> None: ...

class OfferGranted(_message.Message):
    __slots__ = ("session_id", "turn_id", "lease_epoch", "lease_expire_time")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    lease_epoch: int
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InterruptRequested(_message.Message):
    __slots__ = ("session_id", "turn_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaseRevoked(_message.Message):
    __slots__ = ("session_id", "lease_epoch", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_epoch: int
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SnapshotRequested(_message.Message):
    __slots__ = ("session_id", "lease_epoch", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_epoch: int
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DrainRequested(_message.Message):
    __slots__ = ("deadline",)
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    deadline: _timestamp_pb2.Timestamp
    def __init__(self, deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RequestAnswered(_message.Message):
    __slots__ = ("session_id", "turn_id", "request_id", "response_json")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    request_id: str
    response_json: str
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., request_id: _Optional[str] = ..., response_json: _Optional[str] = ...) -> None: ...

class LeasesRenewed(_message.Message):
    __slots__ = ("lease_expire_time", "lost_leases", "resync")
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LOST_LEASES_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    lease_expire_time: _timestamp_pb2.Timestamp
    lost_leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    resync: bool
    def __init__(self, lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lost_leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ..., resync: _Optional[bool] = ...) -> None: ...

class WorkerEvent(_message.Message):
    __slots__ = ("worker_seq", "turn_id", "body")
    WORKER_SEQ_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    worker_seq: int
    turn_id: str
    body: _resources_pb2.EventBody
    def __init__(self, worker_seq: _Optional[int] = ..., turn_id: _Optional[str] = ..., body: _Optional[_Union[_resources_pb2.EventBody, _Mapping]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("worker_id", "session_id", "lease_epoch", "events")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    lease_epoch: int
    events: _containers.RepeatedCompositeFieldContainer[WorkerEvent]
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., events: _Optional[_Iterable[_Union[WorkerEvent, _Mapping]]] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("acked_worker_seq", "last_seq")
    ACKED_WORKER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    acked_worker_seq: int
    last_seq: int
    def __init__(self, acked_worker_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class StreamWorkerEventsRequest(_message.Message):
    __slots__ = ("worker_id", "batches")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    batches: _containers.RepeatedCompositeFieldContainer[SessionEventBatch]
    def __init__(self, worker_id: _Optional[str] = ..., batches: _Optional[_Iterable[_Union[SessionEventBatch, _Mapping]]] = ...) -> None: ...

class SessionEventBatch(_message.Message):
    __slots__ = ("session_id", "lease_epoch", "events")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_epoch: int
    events: _containers.RepeatedCompositeFieldContainer[WorkerEvent]
    def __init__(self, session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., events: _Optional[_Iterable[_Union[WorkerEvent, _Mapping]]] = ...) -> None: ...

class StreamWorkerEventsResponse(_message.Message):
    __slots__ = ("acks", "refused")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[SessionEventsAck]
    refused: _containers.RepeatedCompositeFieldContainer[SessionEventsRefused]
    def __init__(self, acks: _Optional[_Iterable[_Union[SessionEventsAck, _Mapping]]] = ..., refused: _Optional[_Iterable[_Union[SessionEventsRefused, _Mapping]]] = ...) -> None: ...

class SessionEventsAck(_message.Message):
    __slots__ = ("session_id", "lease_epoch", "acked_worker_seq", "last_seq")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACKED_WORKER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_epoch: int
    acked_worker_seq: int
    last_seq: int
    def __init__(self, session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., acked_worker_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class SessionEventsRefused(_message.Message):
    __slots__ = ("session_id", "lease_epoch", "status")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_epoch: int
    status: _status_pb2.Status
    def __init__(self, session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("worker_id", "session_id", "lease_epoch")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    lease_epoch: int
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("snapshot_seq", "runtime_metadata_json", "history", "events", "workspace")
    SNAPSHOT_SEQ_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    snapshot_seq: int
    runtime_metadata_json: str
    history: _containers.RepeatedCompositeFieldContainer[_resources_pb2.HistoryItem]
    events: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Event]
    workspace: _resources_pb2.WorkspaceManifest
    def __init__(self, snapshot_seq: _Optional[int] = ..., runtime_metadata_json: _Optional[str] = ..., history: _Optional[_Iterable[_Union[_resources_pb2.HistoryItem, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[_resources_pb2.Event, _Mapping]]] = ..., workspace: _Optional[_Union[_resources_pb2.WorkspaceManifest, _Mapping]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("worker_id", "session_id", "lease_epoch", "seq", "runtime_metadata_json", "request_id", "history", "workspace", "base_snapshot_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    BASE_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    lease_epoch: int
    seq: int
    runtime_metadata_json: str
    request_id: str
    history: _containers.RepeatedCompositeFieldContainer[_resources_pb2.HistoryItem]
    workspace: _resources_pb2.WorkspaceManifest
    base_snapshot_id: str
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., seq: _Optional[int] = ..., runtime_metadata_json: _Optional[str] = ..., request_id: _Optional[str] = ..., history: _Optional[_Iterable[_Union[_resources_pb2.HistoryItem, _Mapping]]] = ..., workspace: _Optional[_Union[_resources_pb2.WorkspaceManifest, _Mapping]] = ..., base_snapshot_id: _Optional[str] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("snapshot_id", "seq")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    seq: int
    def __init__(self, snapshot_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class FindMissingBlobsRequest(_message.Message):
    __slots__ = ("worker_id", "session_id", "lease_epoch", "digests")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    lease_epoch: int
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., digests: _Optional[_Iterable[str]] = ...) -> None: ...

class FindMissingBlobsResponse(_message.Message):
    __slots__ = ("missing_digests",)
    MISSING_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    missing_digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, missing_digests: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("digest", "size", "offset", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    offset: int
    data: bytes
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutBlobsRequest(_message.Message):
    __slots__ = ("worker_id", "session_id", "lease_epoch", "chunks")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    lease_epoch: int
    chunks: _containers.RepeatedCompositeFieldContainer[BlobChunk]
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[BlobChunk, _Mapping]]] = ...) -> None: ...

class PutBlobsResponse(_message.Message):
    __slots__ = ("blob_count", "bytes_received")
    BLOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    blob_count: int
    bytes_received: int
    def __init__(self, blob_count: _Optional[int] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class GetBlobsRequest(_message.Message):
    __slots__ = ("worker_id", "session_id", "lease_epoch", "digests")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    lease_epoch: int
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., digests: _Optional[_Iterable[str]] = ...) -> None: ...

class GetBlobsResponse(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[BlobChunk]
    def __init__(self, chunks: _Optional[_Iterable[_Union[BlobChunk, _Mapping]]] = ...) -> None: ...
