"""The SDK's typed results: frozen dataclasses and enums mirroring `tether.v1` resources.

Each result keeps the protobuf it came from in `.raw` (excluded from equality and repr) for
callers that need a field this module does not lift.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "Event",
    "EventKind",
    "HistoryItem",
    "HistoryItemRole",
    "Session",
    "SessionPage",
    "SessionState",
    "Snapshot",
    "Turn",
    "TurnState",
    "WorkerStatus",
]


class SessionState(enum.IntEnum):
    """Where a session stands; values equal `tether.v1.SessionState` numbers."""

    UNSPECIFIED = 0
    IDLE = 1
    ACTIVE = 2
    ARCHIVED = 3


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


_TERMINAL_TURN_STATES = frozenset(
    {TurnState.COMPLETED, TurnState.FAILED, TurnState.INTERRUPTED}
)


class HistoryItemRole(enum.IntEnum):
    """What a model-visible history item is; values equal `tether.v1.HistoryItemRole`."""

    UNSPECIFIED = 0
    INPUT = 1
    OUTPUT = 2
    TOOL_CALL = 3
    TOOL_OUTPUT = 4


class EventKind(str, enum.Enum):
    """The name of the `EventBody.kind` oneof field that is set."""

    INPUT_RECEIVED = "input_received"
    TURN_STARTED = "turn_started"
    OUTPUT = "output"
    TURN_COMPLETED = "turn_completed"
    TURN_FAILED = "turn_failed"
    TURN_INTERRUPTED = "turn_interrupted"
    RUNTIME = "runtime"
    UNKNOWN = ""  # a kind this SDK version does not know, or an empty body

    def __str__(self) -> str:
        return self.value


TERMINAL_EVENT_KINDS = frozenset(
    {EventKind.TURN_COMPLETED, EventKind.TURN_FAILED, EventKind.TURN_INTERRUPTED}
)


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
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True once the turn has completed, failed or been interrupted."""
        return self.state.is_terminal


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
    - runtime: `runtime_event_name`, `runtime_json`

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
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True for the event that ends its turn (completed, failed or interrupted)."""
        return self.kind in TERMINAL_EVENT_KINDS


@dataclass(frozen=True)
class HistoryItem:
    """One item of the model-visible history a snapshot holds."""

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
    raw: Any = field(default=None, repr=False, compare=False)
