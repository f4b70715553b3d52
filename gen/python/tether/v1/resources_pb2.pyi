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
    ERROR_REASON_REQUEST_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_REQUEST_ALREADY_RESOLVED: _ClassVar[ErrorReason]
    ERROR_REASON_UNAUTHENTICATED: _ClassVar[ErrorReason]
    ERROR_REASON_PERMISSION_DENIED: _ClassVar[ErrorReason]
    ERROR_REASON_TOKEN_REVOKED: _ClassVar[ErrorReason]
    ERROR_REASON_PAIRING_CODE_INVALID: _ClassVar[ErrorReason]
    ERROR_REASON_LIMIT_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_WORKER_TOKEN_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_WORKER_SEQ_REUSED: _ClassVar[ErrorReason]
    ERROR_REASON_NO_ACTIVE_TURN: _ClassVar[ErrorReason]
    ERROR_REASON_TURN_NOT_ENDED: _ClassVar[ErrorReason]
    ERROR_REASON_NO_COMPLETED_TURN: _ClassVar[ErrorReason]
    ERROR_REASON_TURN_REVERTED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_BUNDLE: _ClassVar[ErrorReason]
    ERROR_REASON_UNSUPPORTED_BUNDLE_VERSION: _ClassVar[ErrorReason]
    ERROR_REASON_SESSION_EXISTS: _ClassVar[ErrorReason]
    ERROR_REASON_OUTPUT_SCHEMA_UNSUPPORTED: _ClassVar[ErrorReason]
    ERROR_REASON_CURSOR_EXPIRED: _ClassVar[ErrorReason]
    ERROR_REASON_WORKSPACE_LIMIT_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_WORKSPACE: _ClassVar[ErrorReason]
    ERROR_REASON_RUNTIME_NOT_PORTABLE: _ClassVar[ErrorReason]
    ERROR_REASON_SNAPSHOT_BASE_UNKNOWN: _ClassVar[ErrorReason]

class RuntimePortability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNTIME_PORTABILITY_UNSPECIFIED: _ClassVar[RuntimePortability]
    RUNTIME_PORTABILITY_HISTORY: _ClassVar[RuntimePortability]
    RUNTIME_PORTABILITY_STATE: _ClassVar[RuntimePortability]
    RUNTIME_PORTABILITY_NONE: _ClassVar[RuntimePortability]

class RequestKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_KIND_UNSPECIFIED: _ClassVar[RequestKind]
    REQUEST_KIND_COMMAND_APPROVAL: _ClassVar[RequestKind]
    REQUEST_KIND_FILE_CHANGE_APPROVAL: _ClassVar[RequestKind]
    REQUEST_KIND_USER_INPUT: _ClassVar[RequestKind]

class RequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATE_UNSPECIFIED: _ClassVar[RequestState]
    REQUEST_STATE_PENDING: _ClassVar[RequestState]
    REQUEST_STATE_RESOLVED: _ClassVar[RequestState]
    REQUEST_STATE_EXPIRED: _ClassVar[RequestState]

class ItemKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_KIND_UNSPECIFIED: _ClassVar[ItemKind]
    ITEM_KIND_USER_MESSAGE: _ClassVar[ItemKind]
    ITEM_KIND_AGENT_MESSAGE: _ClassVar[ItemKind]
    ITEM_KIND_REASONING: _ClassVar[ItemKind]
    ITEM_KIND_COMMAND_EXECUTION: _ClassVar[ItemKind]
    ITEM_KIND_FILE_CHANGE: _ClassVar[ItemKind]
    ITEM_KIND_TOOL_CALL: _ClassVar[ItemKind]

class DeltaKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELTA_KIND_UNSPECIFIED: _ClassVar[DeltaKind]
    DELTA_KIND_AGENT_MESSAGE: _ClassVar[DeltaKind]
    DELTA_KIND_COMMAND_OUTPUT: _ClassVar[DeltaKind]
    DELTA_KIND_REASONING: _ClassVar[DeltaKind]
    DELTA_KIND_FILE_CHANGE: _ClassVar[DeltaKind]

class WorkspaceEntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKSPACE_ENTRY_KIND_UNSPECIFIED: _ClassVar[WorkspaceEntryKind]
    WORKSPACE_ENTRY_KIND_FILE: _ClassVar[WorkspaceEntryKind]
    WORKSPACE_ENTRY_KIND_DIRECTORY: _ClassVar[WorkspaceEntryKind]
    WORKSPACE_ENTRY_KIND_SYMLINK: _ClassVar[WorkspaceEntryKind]
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
ERROR_REASON_REQUEST_NOT_FOUND: ErrorReason
ERROR_REASON_REQUEST_ALREADY_RESOLVED: ErrorReason
ERROR_REASON_UNAUTHENTICATED: ErrorReason
ERROR_REASON_PERMISSION_DENIED: ErrorReason
ERROR_REASON_TOKEN_REVOKED: ErrorReason
ERROR_REASON_PAIRING_CODE_INVALID: ErrorReason
ERROR_REASON_LIMIT_EXCEEDED: ErrorReason
ERROR_REASON_WORKER_TOKEN_NOT_FOUND: ErrorReason
ERROR_REASON_WORKER_SEQ_REUSED: ErrorReason
ERROR_REASON_NO_ACTIVE_TURN: ErrorReason
ERROR_REASON_TURN_NOT_ENDED: ErrorReason
ERROR_REASON_NO_COMPLETED_TURN: ErrorReason
ERROR_REASON_TURN_REVERTED: ErrorReason
ERROR_REASON_INVALID_BUNDLE: ErrorReason
ERROR_REASON_UNSUPPORTED_BUNDLE_VERSION: ErrorReason
ERROR_REASON_SESSION_EXISTS: ErrorReason
ERROR_REASON_OUTPUT_SCHEMA_UNSUPPORTED: ErrorReason
ERROR_REASON_CURSOR_EXPIRED: ErrorReason
ERROR_REASON_WORKSPACE_LIMIT_EXCEEDED: ErrorReason
ERROR_REASON_INVALID_WORKSPACE: ErrorReason
ERROR_REASON_RUNTIME_NOT_PORTABLE: ErrorReason
ERROR_REASON_SNAPSHOT_BASE_UNKNOWN: ErrorReason
RUNTIME_PORTABILITY_UNSPECIFIED: RuntimePortability
RUNTIME_PORTABILITY_HISTORY: RuntimePortability
RUNTIME_PORTABILITY_STATE: RuntimePortability
RUNTIME_PORTABILITY_NONE: RuntimePortability
REQUEST_KIND_UNSPECIFIED: RequestKind
REQUEST_KIND_COMMAND_APPROVAL: RequestKind
REQUEST_KIND_FILE_CHANGE_APPROVAL: RequestKind
REQUEST_KIND_USER_INPUT: RequestKind
REQUEST_STATE_UNSPECIFIED: RequestState
REQUEST_STATE_PENDING: RequestState
REQUEST_STATE_RESOLVED: RequestState
REQUEST_STATE_EXPIRED: RequestState
ITEM_KIND_UNSPECIFIED: ItemKind
ITEM_KIND_USER_MESSAGE: ItemKind
ITEM_KIND_AGENT_MESSAGE: ItemKind
ITEM_KIND_REASONING: ItemKind
ITEM_KIND_COMMAND_EXECUTION: ItemKind
ITEM_KIND_FILE_CHANGE: ItemKind
ITEM_KIND_TOOL_CALL: ItemKind
DELTA_KIND_UNSPECIFIED: DeltaKind
DELTA_KIND_AGENT_MESSAGE: DeltaKind
DELTA_KIND_COMMAND_OUTPUT: DeltaKind
DELTA_KIND_REASONING: DeltaKind
DELTA_KIND_FILE_CHANGE: DeltaKind
WORKSPACE_ENTRY_KIND_UNSPECIFIED: WorkspaceEntryKind
WORKSPACE_ENTRY_KIND_FILE: WorkspaceEntryKind
WORKSPACE_ENTRY_KIND_DIRECTORY: WorkspaceEntryKind
WORKSPACE_ENTRY_KIND_SYMLINK: WorkspaceEntryKind

class Session(_message.Message):
    __slots__ = ("session_id", "runtime", "worker_selector", "labels", "state", "create_time", "update_time", "last_seq", "active_turn_id", "worker_id", "lease_epoch", "runtime_thread_id", "turn_count", "owner", "waiting_reason", "forked_from_session_id", "forked_from_turn_id", "title", "last_activity_time", "delete_time", "compacted_seq")
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
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    FORKED_FROM_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FORKED_FROM_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPACTED_SEQ_FIELD_NUMBER: _ClassVar[int]
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
    owner: str
    waiting_reason: str
    forked_from_session_id: str
    forked_from_turn_id: str
    title: str
    last_activity_time: _timestamp_pb2.Timestamp
    delete_time: _timestamp_pb2.Timestamp
    compacted_seq: int
    def __init__(self, session_id: _Optional[str] = ..., runtime: _Optional[str] = ..., worker_selector: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[SessionState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ..., active_turn_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., runtime_thread_id: _Optional[str] = ..., turn_count: _Optional[int] = ..., owner: _Optional[str] = ..., waiting_reason: _Optional[str] = ..., forked_from_session_id: _Optional[str] = ..., forked_from_turn_id: _Optional[str] = ..., title: _Optional[str] = ..., last_activity_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., compacted_seq: _Optional[int] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("turn_id", "session_id", "input", "state", "idempotency_key", "create_time", "end_time", "worker_id", "lease_epoch", "exit_code", "error_message", "interrupt_request_time", "waiting_reason", "reverted", "start_time", "first_seq", "last_seq", "usage", "final_message", "output_schema", "result_json")
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
    INTERRUPT_REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    REVERTED_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINAL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
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
    interrupt_request_time: _timestamp_pb2.Timestamp
    waiting_reason: str
    reverted: bool
    start_time: _timestamp_pb2.Timestamp
    first_seq: int
    last_seq: int
    usage: TokenUsage
    final_message: str
    output_schema: str
    result_json: str
    def __init__(self, turn_id: _Optional[str] = ..., session_id: _Optional[str] = ..., input: _Optional[str] = ..., state: _Optional[_Union[TurnState, str]] = ..., idempotency_key: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., worker_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., exit_code: _Optional[int] = ..., error_message: _Optional[str] = ..., interrupt_request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., waiting_reason: _Optional[str] = ..., reverted: _Optional[bool] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., final_message: _Optional[str] = ..., output_schema: _Optional[str] = ..., result_json: _Optional[str] = ...) -> None: ...

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

class TurnWaiting(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class SessionReverted(_message.Message):
    __slots__ = ("turn_id", "reverted_turn_ids")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REVERTED_TURN_IDS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    reverted_turn_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, turn_id: _Optional[str] = ..., reverted_turn_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TurnInterrupted(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class FileChange(_message.Message):
    __slots__ = ("path", "kind", "diff")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: str
    diff: str
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[str] = ..., diff: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "kind", "text", "command", "cwd", "status", "exit_code", "aggregated_output", "changes", "raw_json")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    RAW_JSON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    kind: ItemKind
    text: str
    command: str
    cwd: str
    status: str
    exit_code: int
    aggregated_output: str
    changes: _containers.RepeatedCompositeFieldContainer[FileChange]
    raw_json: str
    def __init__(self, item_id: _Optional[str] = ..., kind: _Optional[_Union[ItemKind, str]] = ..., text: _Optional[str] = ..., command: _Optional[str] = ..., cwd: _Optional[str] = ..., status: _Optional[str] = ..., exit_code: _Optional[int] = ..., aggregated_output: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[FileChange, _Mapping]]] = ..., raw_json: _Optional[str] = ...) -> None: ...

class ItemStarted(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: Item
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ...) -> None: ...

class ItemCompleted(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: Item
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ...) -> None: ...

class ItemDelta(_message.Message):
    __slots__ = ("item_id", "kind", "delta")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    kind: DeltaKind
    delta: str
    def __init__(self, item_id: _Optional[str] = ..., kind: _Optional[_Union[DeltaKind, str]] = ..., delta: _Optional[str] = ...) -> None: ...

class TokenUsage(_message.Message):
    __slots__ = ("last_input_tokens", "last_output_tokens", "total_input_tokens", "total_cached_input_tokens", "total_output_tokens", "total_reasoning_output_tokens", "total_tokens", "model_context_window")
    LAST_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LAST_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REASONING_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    last_input_tokens: int
    last_output_tokens: int
    total_input_tokens: int
    total_cached_input_tokens: int
    total_output_tokens: int
    total_reasoning_output_tokens: int
    total_tokens: int
    model_context_window: int
    def __init__(self, last_input_tokens: _Optional[int] = ..., last_output_tokens: _Optional[int] = ..., total_input_tokens: _Optional[int] = ..., total_cached_input_tokens: _Optional[int] = ..., total_output_tokens: _Optional[int] = ..., total_reasoning_output_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., model_context_window: _Optional[int] = ...) -> None: ...

class AgentError(_message.Message):
    __slots__ = ("message", "will_retry", "code")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WILL_RETRY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    message: str
    will_retry: bool
    code: str
    def __init__(self, message: _Optional[str] = ..., will_retry: _Optional[bool] = ..., code: _Optional[str] = ...) -> None: ...

class PendingRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "turn_id", "kind", "method", "params_json", "summary", "item_id", "state", "response_json", "expire_reason", "create_time", "resolve_time", "available_decisions")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TIME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: str
    turn_id: str
    kind: RequestKind
    method: str
    params_json: str
    summary: str
    item_id: str
    state: RequestState
    response_json: str
    expire_reason: str
    create_time: _timestamp_pb2.Timestamp
    resolve_time: _timestamp_pb2.Timestamp
    available_decisions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., kind: _Optional[_Union[RequestKind, str]] = ..., method: _Optional[str] = ..., params_json: _Optional[str] = ..., summary: _Optional[str] = ..., item_id: _Optional[str] = ..., state: _Optional[_Union[RequestState, str]] = ..., response_json: _Optional[str] = ..., expire_reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolve_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., available_decisions: _Optional[_Iterable[str]] = ...) -> None: ...

class RequestOpened(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: PendingRequest
    def __init__(self, request: _Optional[_Union[PendingRequest, _Mapping]] = ...) -> None: ...

class RequestResolved(_message.Message):
    __slots__ = ("request_id", "state", "response_json", "expire_reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: RequestState
    response_json: str
    expire_reason: str
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[_Union[RequestState, str]] = ..., response_json: _Optional[str] = ..., expire_reason: _Optional[str] = ...) -> None: ...

class RuntimeEvent(_message.Message):
    __slots__ = ("name", "json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    json: str
    def __init__(self, name: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class EventBody(_message.Message):
    __slots__ = ("input_received", "turn_started", "output", "turn_completed", "turn_failed", "turn_interrupted", "runtime", "item_started", "item_completed", "item_delta", "token_usage", "agent_error", "request_opened", "request_resolved", "history_item", "turn_waiting", "session_reverted", "workspace_restored")
    INPUT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TURN_STARTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TURN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TURN_FAILED_FIELD_NUMBER: _ClassVar[int]
    TURN_INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    ITEM_STARTED_FIELD_NUMBER: _ClassVar[int]
    ITEM_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ITEM_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOKEN_USAGE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_OPENED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_FIELD_NUMBER: _ClassVar[int]
    TURN_WAITING_FIELD_NUMBER: _ClassVar[int]
    SESSION_REVERTED_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_RESTORED_FIELD_NUMBER: _ClassVar[int]
    input_received: InputReceived
    turn_started: TurnStarted
    output: OutputChunk
    turn_completed: TurnCompleted
    turn_failed: TurnFailed
    turn_interrupted: TurnInterrupted
    runtime: RuntimeEvent
    item_started: ItemStarted
    item_completed: ItemCompleted
    item_delta: ItemDelta
    token_usage: TokenUsage
    agent_error: AgentError
    request_opened: RequestOpened
    request_resolved: RequestResolved
    history_item: HistoryItem
    turn_waiting: TurnWaiting
    session_reverted: SessionReverted
    workspace_restored: WorkspaceRestored
    def __init__(self, input_received: _Optional[_Union[InputReceived, _Mapping]] = ..., turn_started: _Optional[_Union[TurnStarted, _Mapping]] = ..., output: _Optional[_Union[OutputChunk, _Mapping]] = ..., turn_completed: _Optional[_Union[TurnCompleted, _Mapping]] = ..., turn_failed: _Optional[_Union[TurnFailed, _Mapping]] = ..., turn_interrupted: _Optional[_Union[TurnInterrupted, _Mapping]] = ..., runtime: _Optional[_Union[RuntimeEvent, _Mapping]] = ..., item_started: _Optional[_Union[ItemStarted, _Mapping]] = ..., item_completed: _Optional[_Union[ItemCompleted, _Mapping]] = ..., item_delta: _Optional[_Union[ItemDelta, _Mapping]] = ..., token_usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., agent_error: _Optional[_Union[AgentError, _Mapping]] = ..., request_opened: _Optional[_Union[RequestOpened, _Mapping]] = ..., request_resolved: _Optional[_Union[RequestResolved, _Mapping]] = ..., history_item: _Optional[_Union[HistoryItem, _Mapping]] = ..., turn_waiting: _Optional[_Union[TurnWaiting, _Mapping]] = ..., session_reverted: _Optional[_Union[SessionReverted, _Mapping]] = ..., workspace_restored: _Optional[_Union[WorkspaceRestored, _Mapping]] = ...) -> None: ...

class WorkspaceRestored(_message.Message):
    __slots__ = ("worker_id", "file_count", "total_bytes", "files_written", "bytes_downloaded", "files_removed")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWNLOADED_FIELD_NUMBER: _ClassVar[int]
    FILES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    file_count: int
    total_bytes: int
    files_written: int
    bytes_downloaded: int
    files_removed: int
    def __init__(self, worker_id: _Optional[str] = ..., file_count: _Optional[int] = ..., total_bytes: _Optional[int] = ..., files_written: _Optional[int] = ..., bytes_downloaded: _Optional[int] = ..., files_removed: _Optional[int] = ...) -> None: ...

class WorkspaceEntry(_message.Message):
    __slots__ = ("path", "kind", "mode", "size", "digest", "link_target")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: WorkspaceEntryKind
    mode: int
    size: int
    digest: str
    link_target: str
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[WorkspaceEntryKind, str]] = ..., mode: _Optional[int] = ..., size: _Optional[int] = ..., digest: _Optional[str] = ..., link_target: _Optional[str] = ...) -> None: ...

class WorkspaceManifestChunk(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[WorkspaceEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[WorkspaceEntry, _Mapping]]] = ...) -> None: ...

class WorkspaceManifest(_message.Message):
    __slots__ = ("chunk_digests", "file_count", "total_bytes")
    CHUNK_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    chunk_digests: _containers.RepeatedScalarFieldContainer[str]
    file_count: int
    total_bytes: int
    def __init__(self, chunk_digests: _Optional[_Iterable[str]] = ..., file_count: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

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
