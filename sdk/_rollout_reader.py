"""Reading a Codex rollout file (see `tether.sdk.codex_import`): where a thread's rollout is,
its lines parsed and checked (`RolloutError` names the line it refuses), and the lines grouped
into Codex turns (`Thread`), which `_rollout_bundle` turns into a session bundle."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = [
    "SUPPORTED_CLI_VERSIONS",
    "CodexTurn",
    "Line",
    "RolloutError",
    "Thread",
    "default_codex_home",
    "find_rollout",
    "parse",
]

#: The Codex CLI versions whose rollouts are read: [minimum, limit). The worker's Codex runtime
#: speaks the same range (execution_worker/_codex_check.py); widen both once a version is checked.
SUPPORTED_CLI_VERSIONS = ((0, 169, 0), (0, 170, 0))

_TURN_ENDS = frozenset({"task_complete", "turn_aborted"})
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")
_THREAD_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,127}$")


class RolloutError(ValueError):
    """A rollout this module does not read. `line` is the 1-based line it is about (0 when it
    is about no line); str() says what is wrong, and what to do when there is something."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.reason = message


def default_codex_home() -> Path:
    """Where Codex keeps its threads: ``$CODEX_HOME``, else ``~/.codex``."""
    home = os.environ.get("CODEX_HOME")
    return Path(home) if home else Path.home() / ".codex"


def find_rollout(codex_home: Path, thread_id: str) -> Path:
    """The rollout file of thread `thread_id` in `codex_home` (in ``sessions/`` or
    ``archived_sessions/``). Raises `RolloutError` when there is none or more than one."""
    if not _THREAD_ID.match(thread_id):
        raise RolloutError(0, f"{thread_id!r} is not a Codex thread id (a UUID such as Codex prints)")
    codex_home = Path(codex_home)
    name = f"rollout-*-{thread_id}.jsonl"
    found = sorted(
        {
            *codex_home.joinpath("sessions").glob(f"*/*/*/{name}"),
            *codex_home.joinpath("archived_sessions").glob(name),
        }
    )
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        shown = ", ".join(str(p) for p in found)
        raise RolloutError(0, f"thread {thread_id} has {len(found)} rollout files in {codex_home}: {shown}; pass one")
    compressed = sorted(codex_home.joinpath("sessions").glob(f"*/*/*/{name}.zst"))
    if compressed:
        raise RolloutError(
            0, f"the rollout of thread {thread_id} is compressed ({compressed[0]}); decompress it with `zstd -d` first"
        )
    if not codex_home.joinpath("sessions").is_dir():
        raise RolloutError(0, f"{codex_home} has no sessions/ folder: is it a CODEX_HOME? (set CODEX_HOME or pass it)")
    raise RolloutError(0, f"no rollout of thread {thread_id} in {codex_home}/sessions (`codex resume` lists threads)")


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    number: int
    time: Timestamp
    kind: str
    payload: dict[str, Any]

    @property
    def event(self) -> str:
        """The event_msg's type ("" for other lines)."""
        return str(self.payload.get("type", "")) if self.kind == "event_msg" else ""


def parse(data: bytes) -> Iterator[Line]:
    raw_lines = data.split(b"\n")
    if raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()  # the newline ending the last line
    if not any(line.strip() for line in raw_lines):
        raise RolloutError(1, "the file is empty; a Codex rollout starts with a session_meta line")
    last = len(raw_lines)
    first = True
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RolloutError(number, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
        try:
            entry = json.loads(text)
        except ValueError as error:
            cut = " (the file ends mid-line: is Codex still writing it, or was it cut short?)" if number == last else ""
            raise RolloutError(number, f"not JSON: {error}{cut}") from None
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("timestamp"), str)
            and isinstance(entry.get("type"), str)
            and isinstance(entry.get("payload"), dict)
        ):
            got = f"keys {sorted(entry)}" if isinstance(entry, dict) else f"a JSON {type(entry).__name__}"
            raise RolloutError(
                number,
                'not a Codex rollout line: expected an object with "timestamp" (a string), "type" (a string) '
                f'and "payload" (an object), got {got}',
            )
        time = Timestamp()
        try:
            time.FromJsonString(entry["timestamp"])
        except ValueError:
            raise RolloutError(number, f"timestamp {entry['timestamp']!r} is not an RFC 3339 time") from None
        if first:
            _check_meta(number, entry["type"], entry["payload"])
            first = False
        yield Line(number, time, entry["type"], entry["payload"])


def _supported() -> str:
    low, high = (".".join(map(str, v)) for v in SUPPORTED_CLI_VERSIONS)
    return f">={low},<{high}"


def _check_meta(number: int, kind: str, payload: dict[str, Any]) -> None:
    if kind != "session_meta":
        raise RolloutError(number, f"a Codex rollout starts with a session_meta line; this one is {kind!r}")
    version = payload.get("cli_version")
    match = _VERSION.match(version) if isinstance(version, str) else None
    if match is None:
        raise RolloutError(
            number, f"the session_meta has no Codex CLI version (cli_version {version!r}); supported: {_supported()}"
        )
    parsed = tuple(int(part) for part in match.groups())
    if not SUPPORTED_CLI_VERSIONS[0] <= parsed < SUPPORTED_CLI_VERSIONS[1]:
        raise RolloutError(
            number,
            f"rollout of Codex CLI {version} is not supported: Tether reads rollouts of Codex CLI {_supported()} "
            '(lines {"timestamp", "type", "payload"} from a session_meta on), the versions its Codex runtime runs',
        )


@dataclass
class CodexTurn:
    codex_turn_id: str
    start: Line
    before: list[Line] = field(default_factory=list)  # response items written before it, outside a turn
    lines: list[Line] = field(default_factory=list)  # inside the turn
    after: list[Line] = field(default_factory=list)  # response items written after the last turn
    end: Line | None = None
    unended: str = ""  # why the turn has no end marker, when it has none


@dataclass
class Thread:
    meta: Line
    turns: list[CodexTurn]

    @classmethod
    def read(cls, lines: list[Line]) -> Thread:
        meta = lines[0]
        turns: list[CodexTurn] = []
        current: CodexTurn | None = None
        outside: list[Line] = []  # response items written outside a turn, for the next one
        for line in lines[1:]:
            if line.kind == "compacted":
                raise RolloutError(
                    line.number,
                    "Codex compacted this thread, so its model-visible history is not the items in the file; "
                    "importing a compacted thread is not supported",
                )
            event = line.event
            if event == "thread_rolled_back":
                raise RolloutError(
                    line.number,
                    "turns of this thread were rolled back in Codex, so its model-visible history is not the items "
                    "in the file; importing a rolled-back thread is not supported",
                )
            if event == "task_started":
                attribution = line.payload.get("turn_attribution")
                attributed = attribution.get("turn_id") if isinstance(attribution, dict) else None
                codex_turn_id = str(line.payload.get("turn_id") or attributed or "")
                if current is not None and codex_turn_id and codex_turn_id == current.codex_turn_id:
                    continue  # the same turn announced again
                if current is not None:
                    current.unended = "Codex started another turn before this one ended"
                    turns.append(current)
                current = CodexTurn(codex_turn_id, line, before=outside)
                outside = []
            elif event in _TURN_ENDS:
                ended = str(line.payload.get("turn_id") or "")
                if current is not None and (not ended or not current.codex_turn_id or ended == current.codex_turn_id):
                    current.end = line
                    turns.append(current)
                    current = None
            elif line.kind == "response_item":
                (current.lines if current is not None else outside).append(line)
            elif current is not None and line.kind == "event_msg":
                current.lines.append(line)
        if current is not None:
            current.unended = "the rollout ends before this turn did"
            turns.append(current)
        if outside and turns:
            turns[-1].after = outside  # written after the last turn: still model-visible
        if not turns:
            raise RolloutError(0, "the rollout has no turn (no task_started line): there is nothing to import")
        return cls(meta, turns)
