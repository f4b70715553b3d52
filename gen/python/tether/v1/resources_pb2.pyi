import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_IDLE: _ClassVar[SessionState]
    SESSION_STATE_ACTIVE: _ClassVar[SessionState]
    SESSION_STATE_ARCHIVED: _ClassVar[SessionState]

class TurnState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_STATE_UNSPECIFIED: _ClassVar[TurnState]
    TURN_STATE_QUEUED: _ClassVar[TurnState]
    TURN_STATE_OFFERED: _ClassVar[TurnState]
    TURN_STATE_RUNNING: _ClassVar[TurnState]
    TURN_STATE_COMPLETED: _ClassVar[TurnState]
    TURN_STATE_FAILED: _ClassVar[TurnState]
    TURN_STATE_INTERRUPTED: _ClassVar[TurnState]

class OutputStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_STREAM_UNSPECIFIED: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDOUT: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDERR: _ClassVar[OutputStream]

class HistoryItemRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HISTORY_ITEM_ROLE_UNSPECIFIED: _ClassVar[HistoryItemRole]
    HISTORY_ITEM_ROLE_INPUT: _ClassVar[HistoryItemRole]
    HISTORY_ITEM_ROLE_OUTPUT: _ClassVar[HistoryItemRole]
    HISTORY_ITEM_ROLE_TOOL_CALL: _ClassVar[HistoryItemRole]
    HISTORY_ITEM_ROLE_TOOL_OUTPUT: _ClassVar[HistoryItemRole]

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ARGUMENT: _ClassVar[ErrorReason]
    ERROR_REASON_SESSION_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_TURN_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_LEASE_LOST: _ClassVar[ErrorReason]
    ERROR_REASON_SESSION_ARCHIVED: _ClassVar[ErrorReason]
    ERROR_REASON_IDEMPOTENCY_KEY_REUSED: _ClassVar[ErrorReason]
    ERROR_REASON_WORKER_NOT_REGISTERED: _ClassVar[ErrorReason]
    ERROR_REASON_TURN_ALREADY_ENDED: _ClassVar[ErrorReason]
    ERROR_REASON_SNAPSHOT_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_NO_WORKER: _ClassVar[ErrorReason]
    ERROR_REASON_CURSOR_OUT_OF_RANGE: _ClassVar[ErrorReason]
    ERROR_REASON_NOT_IMPLEMENTED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_PAGE_TOKEN: _ClassVar[ErrorReason]
    ERROR_REASON_RUNTIME_MISMATCH: _ClassVar[ErrorReason]
    ERROR_REASON_SESSION_BUSY: _ClassVar[ErrorReason]
    ERROR_REASON_WORKER_NOT_CONNECTED: _ClassVar[ErrorReason]
    ERROR_REASON_REHYDRATION_FAILED: _ClassVar[ErrorReason]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_IDLE: SessionState
SESSION_STATE_ACTIVE: SessionState
SESSION_STATE_ARCHIVED: SessionState
TURN_STATE_UNSPECIFIED: TurnState
TURN_STATE_QUEUED: TurnState
TURN_STATE_OFFERED: TurnState
TURN_STATE_RUNNING: TurnState
TURN_STATE_COMPLETED: TurnState
TURN_STATE_FAILED: TurnState
TURN_STATE_INTERRUPTED: TurnState
OUTPUT_STREAM_UNSPECIFIED: OutputStream
OUTPUT_STREAM_STDOUT: OutputStream
OUTPUT_STREAM_STDERR: OutputStream
HISTORY_ITEM_ROLE_UNSPECIFIED: HistoryItemRole
HISTORY_ITEM_ROLE_INPUT: HistoryItemRole
HISTORY_ITEM_ROLE_OUTPUT: HistoryItemRole
HISTORY_ITEM_ROLE_TOOL_CALL: HistoryItemRole
HISTORY_ITEM_ROLE_TOOL_OUTPUT: HistoryItemRole
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_INVALID_ARGUMENT: ErrorReason
ERROR_REASON_SESSION_NOT_FOUND: ErrorReason
ERROR_REASON_TURN_NOT_FOUND: ErrorReason
ERROR_REASON_LEASE_LOST: ErrorReason
ERROR_REASON_SESSION_ARCHIVED: ErrorReason
ERROR_REASON_IDEMPOTENCY_KEY_REUSED: ErrorReason
ERROR_REASON_WORKER_NOT_REGISTERED: ErrorReason
ERROR_REASON_TURN_ALREADY_ENDED: ErrorReason
ERROR_REASON_SNAPSHOT_NOT_FOUND: ErrorReason
ERROR_REASON_NO_WORKER: ErrorReason
ERROR_REASON_CURSOR_OUT_OF_RANGE: ErrorReason
ERROR_REASON_NOT_IMPLEMENTED: ErrorReason
ERROR_REASON_INVALID_PAGE_TOKEN: ErrorReason
ERROR_REASON_RUNTIME_MISMATCH: ErrorReason
ERROR_REASON_SESSION_BUSY: ErrorReason
ERROR_REASON_WORKER_NOT_CONNECTED: ErrorReason
ERROR_REASON_REHYDRATION_FAILED: ErrorReason

class Session(_message.Message):
    __slots__ = ("session_id", "runtime", "worker_selector", "labels", "state", "create_time", "update_time", "last_seq", "active_turn_id", "worker_id", "lease_epoch", "runtime_thread_id", "turn_count")
    class WorkerSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    WORKER_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_COUNT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    runtime: str
    worker_selector: _containers.ScalarMap[str, str]
    labels: _containers.ScalarMap[str, str]
    state: SessionState
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    last_seq: int
    active_turn_id: str
    worker_id: str
    lease_epoch: int
    runtime_thread_id: str
    turn_count: int
    def __init__(self, session_id: _Optional[str] = ..., runtime: _Optional[str] = ..., worker_selector: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[SessionState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ..., active_turn_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., runtime_thread_id: _Optional[str] = ..., turn_count: _Optional[int] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("turn_id", "session_id", "input", "state", "idempotency_key", "create_time", "end_time", "worker_id", "lease_epoch", "exit_code", "error_message")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    session_id: str
    input: str
    state: TurnState
    idempotency_key: str
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    worker_id: str
    lease_epoch: int
    exit_code: int
    error_message: str
    def __init__(self, turn_id: _Optional[str] = ..., session_id: _Optional[str] = ..., input: _Optional[str] = ..., state: _Optional[_Union[TurnState, str]] = ..., idempotency_key: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., worker_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., exit_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class InputReceived(_message.Message):
    __slots__ = ("input",)
    INPUT_FIELD_NUMBER: _ClassVar[int]
    input: str
    def __init__(self, input: _Optional[str] = ...) -> None: ...

class TurnStarted(_message.Message):
    __slots__ = ("worker_id", "runtime_thread_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    runtime_thread_id: str
    def __init__(self, worker_id: _Optional[str] = ..., runtime_thread_id: _Optional[str] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("stream", "text")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stream: OutputStream
    text: str
    def __init__(self, stream: _Optional[_Union[OutputStream, str]] = ..., text: _Optional[str] = ...) -> None: ...

class TurnCompleted(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...

class TurnFailed(_message.Message):
    __slots__ = ("error_message", "worker_lost")
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKER_LOST_FIELD_NUMBER: _ClassVar[int]
    error_message: str
    worker_lost: bool
    def __init__(self, error_message: _Optional[str] = ..., worker_lost: _Optional[bool] = ...) -> None: ...

class TurnInterrupted(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class RuntimeEvent(_message.Message):
    __slots__ = ("name", "json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    json: str
    def __init__(self, name: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class EventBody(_message.Message):
    __slots__ = ("input_received", "turn_started", "output", "turn_completed", "turn_failed", "turn_interrupted", "runtime")
    INPUT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TURN_STARTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TURN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TURN_FAILED_FIELD_NUMBER: _ClassVar[int]
    TURN_INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    input_received: InputReceived
    turn_started: TurnStarted
    output: OutputChunk
    turn_completed: TurnCompleted
    turn_failed: TurnFailed
    turn_interrupted: TurnInterrupted
    runtime: RuntimeEvent
    def __init__(self, input_received: _Optional[_Union[InputReceived, _Mapping]] = ..., turn_started: _Optional[_Union[TurnStarted, _Mapping]] = ..., output: _Optional[_Union[OutputChunk, _Mapping]] = ..., turn_completed: _Optional[_Union[TurnCompleted, _Mapping]] = ..., turn_failed: _Optional[_Union[TurnFailed, _Mapping]] = ..., turn_interrupted: _Optional[_Union[TurnInterrupted, _Mapping]] = ..., runtime: _Optional[_Union[RuntimeEvent, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("session_id", "seq", "turn_id", "create_time", "body", "lease_epoch")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    turn_id: str
    create_time: _timestamp_pb2.Timestamp
    body: EventBody
    lease_epoch: int
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., turn_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., body: _Optional[_Union[EventBody, _Mapping]] = ..., lease_epoch: _Optional[int] = ...) -> None: ...

class HistoryItem(_message.Message):
    __slots__ = ("role", "text", "turn_id", "raw_json")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_JSON_FIELD_NUMBER: _ClassVar[int]
    role: HistoryItemRole
    text: str
    turn_id: str
    raw_json: str
    def __init__(self, role: _Optional[_Union[HistoryItemRole, str]] = ..., text: _Optional[str] = ..., turn_id: _Optional[str] = ..., raw_json: _Optional[str] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("session_id", "snapshot_id", "seq", "history", "runtime", "runtime_metadata_json", "create_time", "worker_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    snapshot_id: str
    seq: int
    history: _containers.RepeatedCompositeFieldContainer[HistoryItem]
    runtime: str
    runtime_metadata_json: str
    create_time: _timestamp_pb2.Timestamp
    worker_id: str
    def __init__(self, session_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., seq: _Optional[int] = ..., history: _Optional[_Iterable[_Union[HistoryItem, _Mapping]]] = ..., runtime: _Optional[str] = ..., runtime_metadata_json: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...
