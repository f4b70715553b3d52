import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tether.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "name", "runtimes", "labels", "slots", "running_turns", "held_sessions", "connected", "draining", "register_time", "version", "owner", "runtime_portability")
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
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TURNS_FIELD_NUMBER: _ClassVar[int]
    HELD_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_PORTABILITY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    name: str
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    slots: int
    running_turns: int
    held_sessions: int
    connected: bool
    draining: bool
    register_time: _timestamp_pb2.Timestamp
    version: str
    owner: str
    runtime_portability: _containers.ScalarMap[str, _resources_pb2.RuntimePortability]
    def __init__(self, worker_id: _Optional[str] = ..., name: _Optional[str] = ..., runtimes: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., slots: _Optional[int] = ..., running_turns: _Optional[int] = ..., held_sessions: _Optional[int] = ..., connected: _Optional[bool] = ..., draining: _Optional[bool] = ..., register_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[str] = ..., owner: _Optional[str] = ..., runtime_portability: _Optional[_Mapping[str, _resources_pb2.RuntimePortability]] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "grace")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    grace: _duration_pb2.Duration
    def __init__(self, worker_id: _Optional[str] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: WorkerStatus
    def __init__(self, worker: _Optional[_Union[WorkerStatus, _Mapping]] = ...) -> None: ...

class CreatePairingCodeRequest(_message.Message):
    __slots__ = ("ttl",)
    TTL_FIELD_NUMBER: _ClassVar[int]
    ttl: _duration_pb2.Duration
    def __init__(self, ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CreatePairingCodeResponse(_message.Message):
    __slots__ = ("code", "expire_time", "owner")
    CODE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    code: str
    expire_time: _timestamp_pb2.Timestamp
    owner: str
    def __init__(self, code: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class WorkerToken(_message.Message):
    __slots__ = ("token_id", "worker_id", "name", "owner", "create_time", "revoke_time")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    worker_id: str
    name: str
    owner: str
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    def __init__(self, token_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., name: _Optional[str] = ..., owner: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListWorkerTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkerTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[WorkerToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[WorkerToken, _Mapping]]] = ...) -> None: ...

class RevokeWorkerTokenRequest(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    def __init__(self, token_id: _Optional[str] = ...) -> None: ...

class RevokeWorkerTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: WorkerToken
    def __init__(self, token: _Optional[_Union[WorkerToken, _Mapping]] = ...) -> None: ...

class PurgeOwnerDataRequest(_message.Message):
    __slots__ = ("owner",)
    OWNER_FIELD_NUMBER: _ClassVar[int]
    owner: str
    def __init__(self, owner: _Optional[str] = ...) -> None: ...

class PurgeOwnerDataResponse(_message.Message):
    __slots__ = ("sessions_deleted", "worker_tokens_deleted", "workers_deleted", "pairing_codes_deleted", "done")
    SESSIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    WORKER_TOKENS_DELETED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_DELETED_FIELD_NUMBER: _ClassVar[int]
    PAIRING_CODES_DELETED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    sessions_deleted: int
    worker_tokens_deleted: int
    workers_deleted: int
    pairing_codes_deleted: int
    done: bool
    def __init__(self, sessions_deleted: _Optional[int] = ..., worker_tokens_deleted: _Optional[int] = ..., workers_deleted: _Optional[int] = ..., pairing_codes_deleted: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...
