"""Domain records: plain Python values that `api/` converts to and from the contract.

Enum values equal the contract's numbers, so conversion is a cast. An event body stays the
bytes the worker sent (the contract's EventBody encoding): the domain only needs its kind.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field


class SessionState(enum.IntEnum):
    IDLE = 1
    ACTIVE = 2
    ARCHIVED = 3


class TurnState(enum.IntEnum):
    QUEUED = 1
    OFFERED = 2
    RUNNING = 3
    COMPLETED = 4
    FAILED = 5
    INTERRUPTED = 6

    @property
    def ended(self) -> bool:
        return self >= TurnState.COMPLETED


class InputPolicy(enum.IntEnum):
    """What SendInput does when the session has a turn queued or running."""

    ENQUEUE = 1
    REJECT = 2
    INTERRUPT = 3


# Event kinds (the EventBody oneof names) that end a turn, with the state they end it in.
TERMINAL_KINDS = {
    "turn_completed": TurnState.COMPLETED,
    "turn_failed": TurnState.FAILED,
    "turn_interrupted": TurnState.INTERRUPTED,
}

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_last_id = 0


def new_id(prefix: str) -> str:
    """A sortable unique id: 48 bits of milliseconds then 80 random bits, in Crockford base32.

    Sorting ids sorts by creation time, which gives ListSessions a stable, index-only order;
    within one process they strictly increase even inside one millisecond.
    """
    global _last_id
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    if value <= _last_id:  # two ids in one millisecond: keep creation order (monotonic)
        value = _last_id + 1
    _last_id = value
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Session:
    session_id: str
    runtime: str
    worker_selector: dict[str, str]
    labels: dict[str, str]
    create_time_us: int
    update_time_us: int
    archived: bool = False
    runtime_thread_id: str = ""
    turn_count: int = 0
    owner: str = ""
    # ForkSession: the session and the last turn this one was copied from ("" otherwise).
    forked_from_session_id: str = ""
    forked_from_turn_id: str = ""
    # A name for people: set by UpdateSession, else the first input's first line (see
    # `default_title`); "" before any input.
    title: str = ""
    # When a scheduled deletion deletes the session (0: none scheduled).
    delete_time_us: int = 0
    # Events with a seq at or below this were compacted away by retention (0: none).
    compacted_seq: int = 0
    # Its workspace has moved with it since it was created (every session made by a release
    # with workspace checkpoints): with no checkpoint yet, its workspace is empty. False for a
    # session made before, whose files a worker may still hold: those are left alone.
    tracks_workspace: bool = True


@dataclass
class Turn:
    turn_id: str
    session_id: str
    ordinal: int
    input: str
    state: TurnState
    create_time_us: int
    idempotency_key: str = ""
    worker_id: str = ""
    lease_epoch: int = 0
    exit_code: int = 0
    error_message: str = ""
    end_time_us: int = 0
    # When an interrupt of the running turn was asked for (0: none). In memory only: after a
    # control-plane restart a running turn shows none until it is interrupted again.
    interrupt_time_us: int = 0
    # Why the queued turn waits when no connected worker can take it, as said to the session
    # ("" otherwise); what the scheduler last found and since when (time.monotonic()), which is
    # said once it has held for the waiting notice. In memory only, like the queue it describes.
    waiting_reason: str = ""
    waiting_cause: str = ""
    waiting_since: float = 0.0
    # RevertSession moved the session's head back before this turn: it stays readable but left
    # the model-visible history.
    reverted: bool = False
    # For a turn list (ListTurns): when a worker started it (0: not yet), the seqs of its first
    # event (input_received) and of its terminal event (0 while open), the body of the last
    # token_usage event it had (b"": none) and the text of its last agent message.
    start_time_us: int = 0
    first_seq: int = 0
    last_seq: int = 0
    usage: bytes = b""
    final_message: str = ""
    # SendInput's output schema (JSON, "" for none) and, once a turn with one completed, its
    # result: the final message, validated, as compact JSON.
    output_schema: str = ""
    result_json: str = ""


TITLE_MAX = 256  # characters of a title set with UpdateSession
_DEFAULT_TITLE_MAX = 100  # characters of one taken from the first input


def default_title(text: str) -> str:
    """A session's title until one is set: the first non-blank line of its first input,
    whitespace-collapsed and cut to 100 characters (with an ellipsis when cut)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if len(line) > _DEFAULT_TITLE_MAX:
        line = line[: _DEFAULT_TITLE_MAX - 1].rstrip() + "\u2026"
    return line


@dataclass(slots=True)
class Event:
    session_id: str
    seq: int
    turn_id: str
    kind: str
    body: bytes
    create_time_us: int
    lease_epoch: int = 0
    worker_seq: int = 0
    # The event's encoding on the wire, filled in once by api/ and shared by every subscriber.
    wire: bytes | None = None


@dataclass
class Lease:
    session_id: str
    worker_id: str
    epoch: int
    granted_at_us: int


@dataclass
class Snapshot:
    snapshot_id: str
    session_id: str
    seq: int
    worker_id: str
    lease_epoch: int
    runtime: str
    runtime_metadata_json: str
    history: bytes
    history_count: int
    create_time_us: int


@dataclass
class Checkpoint:
    """A session's workspace at a snapshot: the manifest (its chunks, as blob digests) of the
    files its runtime works on. Kept per turn, unlike snapshots, so a fork or a revert to any
    turn finds the files that turn ended with."""

    session_id: str
    seq: int  # the snapshot's watermark
    turn_id: str  # the last turn that ended at or before seq ("" when none had)
    chunk_digests: tuple[str, ...]
    file_count: int
    total_bytes: int
    create_time_us: int


class RequestState(enum.IntEnum):
    PENDING = 1
    RESOLVED = 2
    EXPIRED = 3


class RequestKind(enum.IntEnum):
    OTHER = 0
    COMMAND_APPROVAL = 1
    FILE_CHANGE_APPROVAL = 2
    USER_INPUT = 3


@dataclass
class PendingRequest:
    """A runtime's question that waits for an application's answer (RespondToRequest)."""

    request_id: str
    session_id: str
    turn_id: str
    kind: RequestKind
    method: str
    params_json: str
    summary: str
    item_id: str
    available_decisions: list[str]
    state: RequestState
    create_time_us: int
    response_json: str = ""
    expire_reason: str = ""
    resolve_time_us: int = 0


@dataclass
class WorkerInfo:
    worker_id: str
    name: str
    registration_id: str
    runtimes: list[str]
    labels: dict[str, str]
    slots: int
    version: str
    registered_at_us: int = field(default_factory=now_us)
    owner: str = ""
    # Those of `runtimes` that honour a turn's output schema (not stored: sent at each Register).
    output_schema_runtimes: list[str] = field(default_factory=list)
    # How each runtime's sessions move: "history", "state" or "none" (a runtime left out is
    # "history"; not stored: sent at each Register).
    runtime_portability: dict[str, str] = field(default_factory=dict)
    # The protocol features it announced (RegisterRequest.features; not stored).
    features: frozenset[str] = frozenset()
