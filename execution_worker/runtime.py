"""The runtime plugin API: what an agent runtime must do for the worker, and the events it may
emit. A plugin author needs nothing but this module.

It loads no runtime, no SDK and no gRPC (an import-linter contract keeps it so): the runtime
layer speaks plain Python dataclasses, never protobuf, and the worker converts at its edge
(`_convert.py`). Which runtimes an installation offers is `_discovery.py`'s business; a plugin
registers its `RuntimeFactory` under the `ENTRY_POINT_GROUP` entry point group.

A runtime instance belongs to one session on this worker. The worker calls, in order:
`start()` once (fresh, or rehydrated from history), then `run_turn()` for each turn (never two
at once), `interrupt()` while a turn runs, `export_history()` / `runtime_metadata()` for a
snapshot, and `close()` when the session leaves the worker.
"""

from __future__ import annotations

import abc
import enum
import functools
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

#: Entry point group third-party runtimes register their factory under.
ENTRY_POINT_GROUP = "tether.runtimes"

# Session ids come from the server but end up in file system paths.
_SAFE_SESSION_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


class HistoryRole(enum.Enum):
    """What a model-visible history item is (mirrors tether.v1.HistoryItemRole)."""

    INPUT = "input"
    OUTPUT = "output"
    TOOL_CALL = "tool_call"
    TOOL_OUTPUT = "tool_output"


class Portability(enum.Enum):
    """How a runtime's sessions move to another worker (mirrors tether.v1.RuntimePortability).

    - `HISTORY`: the worker injects the model-visible history Tether recorded (`start()`'s
      `history`); the runtime needs nothing else. The default, and what Codex declares.
    - `STATE`: the runtime's own state rides in each snapshot (`runtime_metadata()`), and a
      worker taking the session over hands it back through `restore_state()` before `start()`.
    - `NONE`: the runtime cannot continue a session elsewhere. The control plane refuses to
      move a session that has run a turn to another worker, and says why.
    """

    HISTORY = "history"
    STATE = "state"
    NONE = "none"


class OutputStream(enum.Enum):
    """Which stream of the runtime an output chunk came from."""

    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One item of a session's model-visible history."""

    role: HistoryRole
    text: str
    turn_id: str = ""
    raw_json: str = ""


@dataclass(frozen=True, slots=True)
class Output:
    """A chunk of output streamed while a turn runs."""

    stream: OutputStream
    text: str


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    """Terminal: the runtime ran the turn (whatever the command's exit code)."""

    exit_code: int = 0


@dataclass(frozen=True, slots=True)
class TurnFailed:
    """Terminal: the runtime could not run the turn."""

    error_message: str


@dataclass(frozen=True, slots=True)
class TurnInterrupted:
    """Terminal: the turn was stopped on request before it finished."""

    reason: str


class ItemKind(enum.Enum):
    """What a runtime item is (mirrors tether.v1.ItemKind)."""

    OTHER = "other"
    USER_MESSAGE = "user_message"
    AGENT_MESSAGE = "agent_message"
    REASONING = "reasoning"
    COMMAND_EXECUTION = "command_execution"
    FILE_CHANGE = "file_change"
    TOOL_CALL = "tool_call"


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file an item changed: `kind` is "add", "delete" or "update"; `diff` a unified diff."""

    path: str
    kind: str
    diff: str = ""


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of a turn's work (a message, a command, a file change) as the runtime reports it."""

    item_id: str
    kind: ItemKind
    text: str = ""
    command: str = ""
    cwd: str = ""
    status: str = ""
    exit_code: int | None = None
    aggregated_output: str = ""
    changes: tuple[FileChange, ...] = ()
    raw_json: str = ""


@dataclass(frozen=True, slots=True)
class ItemStarted:
    item: Item


@dataclass(frozen=True, slots=True)
class ItemCompleted:
    item: Item


class DeltaKind(enum.Enum):
    """What an `ItemDelta` extends (mirrors tether.v1.DeltaKind)."""

    AGENT_MESSAGE = "agent_message"
    COMMAND_OUTPUT = "command_output"
    REASONING = "reasoning"
    FILE_CHANGE = "file_change"


@dataclass(frozen=True, slots=True)
class ItemDelta:
    """A piece of an item's text or output, streamed while it runs."""

    item_id: str
    kind: DeltaKind
    delta: str


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Model tokens: the last request's and the runtime thread's running totals."""

    last_input_tokens: int = 0
    last_output_tokens: int = 0
    total_input_tokens: int = 0
    total_cached_input_tokens: int = 0
    total_output_tokens: int = 0
    total_reasoning_output_tokens: int = 0
    total_tokens: int = 0
    model_context_window: int = 0


@dataclass(frozen=True, slots=True)
class AgentError:
    """An error the runtime reported (the turn may still go on when `will_retry`)."""

    message: str
    will_retry: bool = False
    code: str = ""


@dataclass(frozen=True, slots=True)
class RawEvent:
    """A runtime-specific event with no typed form: its name and JSON payload."""

    name: str
    json: str


@dataclass(frozen=True, slots=True)
class HistoryAppended:
    """A model-visible history item the runtime recorded during the turn. Written to the log so
    a restore from the log (no snapshot yet) can rehydrate the runtime elsewhere."""

    item: HistoryItem


class RequestKind(enum.Enum):
    """What a pending request asks (mirrors tether.v1.RequestKind)."""

    OTHER = "other"
    COMMAND_APPROVAL = "command_approval"
    FILE_CHANGE_APPROVAL = "file_change_approval"
    USER_INPUT = "user_input"


@dataclass(frozen=True, slots=True)
class RequestOpened:
    """The runtime waits for an answer. The worker stores it as a pending request on the
    control plane; the answer comes back through `Runtime.respond(request_id, answer)`.
    `request_id` comes from `new_request_id()`."""

    request_id: str
    kind: RequestKind
    method: str
    params_json: str
    summary: str = ""
    item_id: str = ""
    available_decisions: tuple[str, ...] = ()


def new_request_id() -> str:
    """A fresh pending-request id: "req_" and 26 random Crockford base32 characters."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    value = int.from_bytes(os.urandom(17), "big")
    return "req_" + "".join(alphabet[(value >> (5 * i)) & 31] for i in range(26))


#: What `Runtime.run_turn` yields: any number of non-terminal events, then exactly one terminal
#: event.
RuntimeEvent = (
    Output
    | ItemStarted
    | ItemCompleted
    | ItemDelta
    | TokenUsage
    | AgentError
    | RawEvent
    | HistoryAppended
    | RequestOpened
    | TurnCompleted
    | TurnFailed
    | TurnInterrupted
)
#: The events that end a turn.
TERMINAL_EVENTS = (TurnCompleted, TurnFailed, TurnInterrupted)


class Runtime(abc.ABC):
    """One session's agent runtime on this worker."""

    @abc.abstractmethod
    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        """Prepare the session under `workdir`; `history` is empty for a fresh session and the
        model-visible history to continue from when rehydrating. Raising fails the turn."""

    @abc.abstractmethod
    def run_turn(self, turn_id: str, input: str) -> AsyncIterator[RuntimeEvent]:
        """Run one turn: yield `Output` chunks as they come, then exactly one terminal event.

        A runtime whose factory honours output schemas (`honours_output_schema`) is also called
        with `output_schema=` (the JSON Schema, a dict) for a turn that has one: its last agent
        message (`ItemCompleted` of an `AGENT_MESSAGE` item) must then be JSON in that shape,
        which the control plane validates."""

    @abc.abstractmethod
    async def interrupt(self, reason: str) -> None:
        """Stop the running turn, which then ends with `TurnInterrupted(reason)`; no-op if idle."""

    async def respond(self, request_id: str, answer: dict[str, Any]) -> bool:
        """Deliver an application's answer to a `RequestOpened` this runtime yielded. Returns
        False when no such request waits (already answered, or its turn ended); the worker
        then ignores the answer. Runtimes that never ask need not override it."""
        return False

    @abc.abstractmethod
    def export_history(self) -> list[HistoryItem]:
        """The model-visible history of every finished turn, for a snapshot."""

    def runtime_metadata(self) -> dict[str, Any]:
        """Runtime-specific state a snapshot keeps next to the history (JSON-serialisable). A
        runtime of `Portability.STATE` keeps here what `restore_state()` needs."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Called before `start()` on a worker taking the session over, with the metadata of
        the session's latest snapshot (`{}` when there is none). Only runtimes of
        `Portability.STATE` are called. Raising fails the turn closed (the runtime never
        starts): a runtime that cannot continue from `state` must raise, never start empty."""
        raise NotImplementedError(f"{type(self).__name__} declares Portability.STATE but has no restore_state()")

    def workspace_dir(self, session_id: str, workdir: Path) -> Path | None:
        """The directory whose files move with the session, or None to opt out (its files then
        stay on the worker that wrote them). Called before `start()`.

        The worker checkpoints this directory with each snapshot, only while the workspace is
        quiescent: between turns (after a turn's terminal event, before the next `run_turn`),
        never while a command runs. On a worker that takes the session at a new epoch it makes
        the directory match the latest checkpoint before `start()`. The default is the session's
        `session_workspace`; a runtime working elsewhere says where."""
        return session_workspace(workdir, session_id)

    @property
    def runtime_thread_id(self) -> str:
        """The runtime's own id for the session (for example a Codex thread id), if any."""
        return ""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything; kill whatever still runs. Idempotent."""


#: Builds a fresh, not yet started runtime instance.
RuntimeFactory = Callable[[], Runtime]


def honours_output_schema(factory: RuntimeFactory) -> bool:
    """Whether the runtimes `factory` makes honour a turn's output schema: the factory (a
    function, a `functools.partial` of one, or a Runtime class) has `honours_output_schema`
    set true (see `honouring_output_schema`). The worker tells the control plane at Register,
    which then offers turns with a schema only to such runtimes."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return bool(getattr(factory, "honours_output_schema", False))


def honouring_output_schema(factory: _F) -> _F:
    """Mark a runtime factory (a function or a Runtime class) as making runtimes that honour
    output schemas: their `run_turn` takes `output_schema=`."""
    setattr(factory, "honours_output_schema", True)  # noqa: B010 (a plain function has no such attribute)
    return factory


def runtime_portability(factory: RuntimeFactory) -> Portability:
    """How sessions of the runtimes `factory` makes move (see `Portability`): the factory's
    `portability` attribute (set it with `declaring_portability`, or as a class attribute of
    a Runtime class; a `functools.partial` is looked through), `Portability.HISTORY` if unset.
    The worker declares it at Register; `ListWorkers` shows it."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    value = getattr(factory, "portability", Portability.HISTORY)
    return value if isinstance(value, Portability) else Portability(value)


def declaring_portability(portability: Portability) -> Callable[[_F], _F]:
    """Declare how the sessions of a runtime factory (a function or a Runtime class) move."""

    def mark(factory: _F) -> _F:
        setattr(factory, "portability", portability)  # noqa: B010 (a plain function has no such attribute)
        return factory

    return mark


def session_workspace(workdir: Path, session_id: str) -> Path:
    """The directory a session's runtime works in: `<workdir>/sessions/<session_id>/`."""
    if not _SAFE_SESSION_ID.match(session_id) or session_id in {".", ".."}:
        raise ValueError(f"session id {session_id!r} is not safe to use as a directory name")
    return workdir / "sessions" / session_id


__all__ = [
    "ENTRY_POINT_GROUP",
    "TERMINAL_EVENTS",
    "AgentError",
    "DeltaKind",
    "FileChange",
    "HistoryAppended",
    "HistoryItem",
    "HistoryRole",
    "Item",
    "ItemCompleted",
    "ItemDelta",
    "ItemKind",
    "ItemStarted",
    "Output",
    "OutputStream",
    "Portability",
    "RawEvent",
    "RequestKind",
    "RequestOpened",
    "Runtime",
    "RuntimeEvent",
    "RuntimeFactory",
    "TokenUsage",
    "TurnCompleted",
    "TurnFailed",
    "TurnInterrupted",
    "declaring_portability",
    "honouring_output_schema",
    "honours_output_schema",
    "new_request_id",
    "runtime_portability",
    "session_workspace",
]
