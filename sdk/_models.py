"""The SDK's typed results: frozen dataclasses and enums mirroring `tether.v1` resources.

Each result keeps the protobuf it came from in `.raw` (excluded from equality and repr) for
callers that need a field this module does not lift.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "DeltaKind",
    "Event",
    "EventKind",
    "FileChange",
    "HistoryItem",
    "HistoryItemRole",
    "Item",
    "ItemKind",
    "PairingCode",
    "PendingRequest",
    "RequestKind",
    "RequestState",
    "Session",
    "SessionPage",
    "SessionState",
    "Snapshot",
    "TokenUsage",
    "WorkspaceRestored",
    "Turn",
    "TurnState",
    "WorkerStatus",
    "WorkerToken",
]


class SessionState(enum.IntEnum):
    """Where a session stands; values equal `tether.v1.SessionState` numbers."""

    UNSPECIFIED = 0
    IDLE = 1
    ACTIVE = 2
    ARCHIVED = 3


class InputPolicy(enum.IntEnum):
    """What `send_input` does when the session has a turn queued or running; values equal
    `tether.v1.InputPolicy` numbers."""

    #: Queue the new turn after the others (the default).
    ENQUEUE = 1
    #: Refuse it with SessionBusyError (SESSION_BUSY); nothing is stored.
    REJECT = 2
    #: Interrupt the running turn and end the queued ones, then run the new turn next.
    INTERRUPT = 3


class TurnState(enum.IntEnum):
    """The lifecycle of one turn; values equal `tether.v1.TurnState` numbers."""

    UNSPECIFIED = 0
    QUEUED = 1
    OFFERED = 2
    RUNNING = 3
    COMPLETED = 4
    FAILED = 5
    INTERRUPTED = 6

    @property
    def is_terminal(self) -> bool:
        """True once the turn has ended and will not change again."""
        return self in _TERMINAL_TURN_STATES


_TERMINAL_TURN_STATES = frozenset({TurnState.COMPLETED, TurnState.FAILED, TurnState.INTERRUPTED})


class HistoryItemRole(enum.IntEnum):
    """What a model-visible history item is; values equal `tether.v1.HistoryItemRole`."""

    UNSPECIFIED = 0
    INPUT = 1
    OUTPUT = 2
    TOOL_CALL = 3
    TOOL_OUTPUT = 4


class ItemKind(enum.IntEnum):
    """What a runtime item is; values equal `tether.v1.ItemKind` numbers."""

    UNSPECIFIED = 0  # another kind: the item's `raw_json` says what
    USER_MESSAGE = 1
    AGENT_MESSAGE = 2
    REASONING = 3
    COMMAND_EXECUTION = 4
    FILE_CHANGE = 5
    TOOL_CALL = 6


class DeltaKind(enum.IntEnum):
    """What an item delta extends; values equal `tether.v1.DeltaKind` numbers."""

    UNSPECIFIED = 0
    AGENT_MESSAGE = 1
    COMMAND_OUTPUT = 2
    REASONING = 3
    FILE_CHANGE = 4


class RequestKind(enum.IntEnum):
    """What a pending request asks for; values equal `tether.v1.RequestKind` numbers.

    The answer each kind takes (`respond_to_request` builds the first two for you)::

        COMMAND_APPROVAL, FILE_CHANGE_APPROVAL  {"decision": "accept" | "acceptForSession"
                                                 | "decline" | "cancel"}
        USER_INPUT                              {"answers": {"<question id>": {"answers": [...]}}}
        UNSPECIFIED                             whatever the runtime's `params_json` asks for
    """

    UNSPECIFIED = 0
    COMMAND_APPROVAL = 1
    FILE_CHANGE_APPROVAL = 2
    USER_INPUT = 3


class RequestState(enum.IntEnum):
    """Where a pending request stands; values equal `tether.v1.RequestState` numbers."""

    UNSPECIFIED = 0
    PENDING = 1  # waiting for an answer; its turn is blocked on it
    RESOLVED = 2  # answered, exactly once
    EXPIRED = 3  # its turn ended before an answer


class EventKind(str, enum.Enum):
    """The name of the `EventBody.kind` oneof field that is set."""

    INPUT_RECEIVED = "input_received"
    TURN_STARTED = "turn_started"
    OUTPUT = "output"
    TURN_COMPLETED = "turn_completed"
    TURN_FAILED = "turn_failed"
    TURN_INTERRUPTED = "turn_interrupted"
    RUNTIME = "runtime"
    ITEM_STARTED = "item_started"
    ITEM_COMPLETED = "item_completed"
    ITEM_DELTA = "item_delta"
    TOKEN_USAGE = "token_usage"
    AGENT_ERROR = "agent_error"
    REQUEST_OPENED = "request_opened"
    REQUEST_RESOLVED = "request_resolved"
    HISTORY_ITEM = "history_item"
    TURN_WAITING = "turn_waiting"
    SESSION_REVERTED = "session_reverted"
    WORKSPACE_RESTORED = "workspace_restored"
    UNKNOWN = ""  # a kind this SDK version does not know, or an empty body

    def __str__(self) -> str:
        return self.value


TERMINAL_EVENT_KINDS = frozenset({EventKind.TURN_COMPLETED, EventKind.TURN_FAILED, EventKind.TURN_INTERRUPTED})


@dataclass(frozen=True)
class Session:
    """A durable conversation with an agent runtime."""

    session_id: str
    runtime: str
    state: SessionState
    worker_selector: dict[str, str]
    labels: dict[str, str]
    create_time: datetime | None
    update_time: datetime | None
    last_seq: int
    active_turn_id: str
    worker_id: str
    lease_epoch: int
    runtime_thread_id: str
    turn_count: int
    #: The owner the session belongs to.
    owner: str = ""
    #: Why the session's next turn waits when no connected worker can take it ("" otherwise).
    waiting_reason: str = ""
    #: The session this one was forked from and the last turn copied ("" for a new session).
    forked_from_session_id: str = ""
    forked_from_turn_id: str = ""
    #: A name for people: set with `update_session`, else the first input's first line.
    title: str = ""
    #: When the session's log last grew (its creation while the log is empty).
    last_activity_time: datetime | None = None
    #: When a scheduled deletion deletes the session; None when none is scheduled.
    delete_time: datetime | None = None
    #: Retention compacted away the events up to this seq (their history is in the session's
    #: snapshot); reading from below it raises OutOfRangeError (CURSOR_EXPIRED). 0: all kept.
    compacted_seq: int = 0
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class SessionPage:
    """One page of `list_sessions`; `next_page_token` is empty on the last page."""

    sessions: list[Session]
    next_page_token: str


@dataclass(frozen=True)
class Turn:
    """One input given to a session and what the runtime did with it.

    `deduplicated` is True only on the result of `send_input` when the idempotency key matched
    a turn stored by an earlier call.
    """

    turn_id: str
    session_id: str
    input: str
    state: TurnState
    idempotency_key: str
    create_time: datetime | None
    end_time: datetime | None
    worker_id: str
    lease_epoch: int
    exit_code: int
    error_message: str
    deduplicated: bool = False
    #: Why the queued turn waits when no connected worker can take it ("" otherwise).
    waiting_reason: str = ""
    #: When an interrupt of the running turn was asked for; None when none was. The turn ends
    #: when its worker stops it, or when the control plane does after its interrupt grace.
    interrupt_request_time: datetime | None = None
    #: True once a revert moved the session's head back before this turn: it stays readable
    #: but left the model-visible history.
    reverted: bool = False
    #: When a worker started the turn; None while it has not.
    start_time: datetime | None = None
    #: The seqs of the turn's first event and of its terminal one (0 while the turn is open):
    #: `stream_events(session_id, after_seq=first_seq - 1)` reads the turn's events.
    first_seq: int = 0
    last_seq: int = 0
    #: The last token usage the runtime reported during the turn; None when it reported none.
    usage: TokenUsage | None = None
    #: The text of the turn's last agent message ("" when it had none; a shell turn has its
    #: exit_code instead).
    final_message: str = ""
    #: The JSON Schema the turn's result must match (send_input's output_schema); "" if none.
    output_schema: str = ""
    #: The validated result of a completed turn that had an output schema, as JSON; "" otherwise.
    result_json: str = ""
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def result(self) -> Any:
        """The turn's typed result (`result_json` parsed: a dict, a list, a number...), None
        when it has none."""
        return json.loads(self.result_json) if self.result_json else None

    @property
    def is_terminal(self) -> bool:
        """True once the turn has completed, failed or been interrupted."""
        return self.state.is_terminal


@dataclass(frozen=True)
class TurnPage:
    """One page of `list_turns`; `next_page_token` is empty on the last page."""

    turns: list[Turn]
    next_page_token: str


@dataclass(frozen=True)
class FileChange:
    """One file an item changed: `kind` is "add", "delete" or "update", `diff` a unified diff."""

    path: str
    kind: str
    diff: str
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Item:
    """One unit of a turn's work as the runtime reports it: a message, a command, file changes.

    `text` holds a message or reasoning summary; `command`, `cwd`, `exit_code` (None until the
    command ends) and `aggregated_output` describe a command execution; `changes` a file
    change. `status` is the runtime's ("inProgress", "completed", "failed", "declined") and
    `raw_json` the runtime's own item.
    """

    item_id: str
    kind: ItemKind
    text: str
    command: str
    cwd: str
    status: str
    exit_code: int | None
    aggregated_output: str
    changes: list[FileChange]
    raw_json: str
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class WorkspaceRestored:
    """A worker brought a session's workspace to its latest checkpoint (a move)."""

    #: Files and symlinks in the checkpoint, and the bytes of file content.
    file_count: int
    total_bytes: int
    #: Files it wrote (the rest it already held with the same content), the bytes it
    #: downloaded, and the paths it removed because the checkpoint does not have them.
    files_written: int
    bytes_downloaded: int
    files_removed: int
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class TokenUsage:
    """Model tokens: the last model request's (`last_*`) and the runtime thread's totals."""

    last_input_tokens: int
    last_output_tokens: int
    total_input_tokens: int
    total_cached_input_tokens: int
    total_output_tokens: int
    total_reasoning_output_tokens: int
    total_tokens: int
    #: The model's context window; 0 when the runtime did not say.
    model_context_window: int
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class PendingRequest:
    """A question a runtime asked mid-turn (an approval, user input); its turn waits for an
    answer (`respond_to_request`). Each request resolves exactly once, or expires with its turn.

    `params_json` is the runtime's question as JSON, `summary` one line for people,
    `available_decisions` the answers an approval offers; once resolved `response_json` holds
    the answer, once expired `expire_reason` says why.
    """

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
    create_time: datetime | None
    resolve_time: datetime | None
    available_decisions: list[str]
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def is_pending(self) -> bool:
        """True while the request waits for an answer."""
        return self.state is RequestState.PENDING


@dataclass(frozen=True)
class Event:
    """One entry of a session's durable log.

    `kind` names what happened; the fields that apply to it are set and the others keep their
    empty defaults:

    - input_received: `input`
    - turn_started: `worker_id`, `runtime_thread_id`
    - output: `text`, `stream` ("stdout", "stderr" or "")
    - turn_completed: `exit_code`
    - turn_failed: `error_message`, `worker_lost` (True when the control plane ended the
      turn because its worker died, was partitioned or lost the lease; such a turn is not
      retried automatically)
    - turn_interrupted: `reason`
    - turn_waiting: `reason` (why no connected worker can take the queued turn yet; written by
      the control plane)
    - runtime: `runtime_event_name`, `runtime_json`
    - item_started, item_completed: `item`, and its id in `item_id`
    - item_delta: `item_id`, `delta_kind`, `text` (the piece to append to the item's text or
      output)
    - token_usage: `token_usage`
    - agent_error: `error_message`, `will_retry` (True when the runtime retries by itself, so
      the turn goes on), `error_code` (the runtime's code, may be empty)
    - request_opened: `request` (state PENDING), and its id in `request_id`
    - request_resolved: `request_id`, `request_state` (RESOLVED or EXPIRED), `response_json`
      (the answer, when resolved), `reason` (why it expired, when it did)
    - history_item: `history_item` (model-visible history a restore feeds to a new runtime;
      applications may ignore it)
    - session_reverted: `reverted_turn_ids` (the turns that left the model-visible history);
      `turn_id` is the turn that is now the head (written by the control plane)
    - workspace_restored: `workspace_restored` (a worker that took the session made its files
      match the latest checkpoint before the turn ran), and the worker in `worker_id`

    `lease_epoch` is the lease under which a worker wrote the event, 0 for events the control
    plane wrote itself (input received, a turn it ended).
    """

    session_id: str
    seq: int
    turn_id: str
    create_time: datetime | None
    kind: EventKind
    input: str = ""
    text: str = ""
    stream: str = ""
    exit_code: int = 0
    error_message: str = ""
    reason: str = ""
    worker_id: str = ""
    runtime_thread_id: str = ""
    runtime_event_name: str = ""
    runtime_json: str = ""
    worker_lost: bool = False
    lease_epoch: int = 0
    item: Item | None = None
    item_id: str = ""
    delta_kind: DeltaKind = DeltaKind.UNSPECIFIED
    token_usage: TokenUsage | None = None
    will_retry: bool = False
    error_code: str = ""
    request: PendingRequest | None = None
    request_id: str = ""
    request_state: RequestState = RequestState.UNSPECIFIED
    response_json: str = ""
    history_item: HistoryItem | None = None
    reverted_turn_ids: tuple[str, ...] = ()
    workspace_restored: WorkspaceRestored | None = None
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True for the event that ends its turn (completed, failed or interrupted)."""
        return self.kind in TERMINAL_EVENT_KINDS


@dataclass(frozen=True)
class HistoryItem:
    """One item of the model-visible history: a snapshot holds them, a history_item event
    carries one."""

    role: HistoryItemRole
    text: str
    turn_id: str
    raw_json: str
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Snapshot:
    """A durable checkpoint of a session's model-visible history up to `seq`."""

    session_id: str
    snapshot_id: str
    seq: int
    history: list[HistoryItem]
    runtime: str
    runtime_metadata_json: str
    create_time: datetime | None
    worker_id: str
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class WorkerStatus:
    """What the control plane knows about one execution worker (`list_workers`)."""

    worker_id: str
    name: str
    runtimes: list[str]
    labels: dict[str, str]
    slots: int
    #: Turns offered to it or running on it now.
    running_turns: int
    #: Sessions whose lease it holds.
    held_sessions: int
    #: True while its Lease stream is open.
    connected: bool
    #: True once it started draining.
    draining: bool
    register_time: datetime | None
    version: str
    #: The owner whose work it runs.
    owner: str = ""
    #: How each of its runtimes' sessions move to another worker: "history" (rehydrated from
    #: the recorded history), "state" (the runtime's own state rides in snapshots) or "none"
    #: (a session that has run on a worker stays there).
    runtime_portability: dict[str, str] = field(default_factory=dict)
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class PairingCode:
    """A one-time code a worker exchanges for a worker token (`tether worker pair --code`)."""

    code: str
    expire_time: datetime | None
    owner: str


@dataclass(frozen=True)
class WorkerToken:
    """A worker's credential as listed; the secret itself is only ever shown to the worker."""

    token_id: str
    worker_id: str
    name: str
    owner: str
    create_time: datetime | None
    #: When it was revoked; None while it is valid.
    revoke_time: datetime | None
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def revoked(self) -> bool:
        return self.revoke_time is not None


@dataclass(frozen=True)
class PurgeProgress:
    """How far `purge_owner_data` has got; the last one has `done` set."""

    sessions_deleted: int
    worker_tokens_deleted: int
    workers_deleted: int
    pairing_codes_deleted: int
    done: bool
