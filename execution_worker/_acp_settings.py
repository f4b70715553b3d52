"""How the ACP runtime runs its agent: `AcpSettings` (the worker's `--acp-*` flags).

Kept apart from the runtime so that the CLI can name them without loading the runtime itself.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tether.execution_worker._codex_settings import absolute_path

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: A state directory bigger than this is not carried: the move fails closed with the reason.
DEFAULT_MAX_STATE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class AcpSettings:
    """How the ACP runtime runs the agent (the worker's `--acp-*` flags)."""

    #: The agent's command line (argv); a first word with a slash is made absolute here, as the
    #: agent runs in the session's workspace.
    command: tuple[str, ...] = ()
    #: Set in the agent's environment, on top of the worker's own.
    env: Mapping[str, str] = field(default_factory=dict)
    #: The environment variable through which the agent takes its state directory (for example
    #: CODEX_HOME for codex-acp). Each session gets a directory of its own, carried in the
    #: session's snapshots, so an agent that offers `session/load` continues on another worker.
    #: None: the agent keeps its state where it likes, and its sessions cannot move.
    state_dir_env: str | None = None
    #: Files copied into each fresh state directory (a config.toml, a login), when given.
    state_seed: Path | None = None
    #: Glob patterns (against the path relative to the state directory) left out of the
    #: carried state: caches and logs the agent rebuilds.
    state_exclude: tuple[str, ...] = ()
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES
    #: Deadline of every request but `session/prompt` (initialize, session/new, session/load).
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        command = tuple(self.command)
        if command and (os.sep in command[0] or (os.altsep and os.altsep in command[0])):
            command = (str(absolute_path(command[0])), *command[1:])
        object.__setattr__(self, "command", command)
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "state_exclude", tuple(self.state_exclude))
        if self.state_seed is not None:
            object.__setattr__(self, "state_seed", absolute_path(self.state_seed))
        for name in self.env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"acp environment variable name {name!r} is not valid")
        if self.state_dir_env is not None and not _ENV_NAME.match(self.state_dir_env):
            raise ValueError(f"acp state directory variable {self.state_dir_env!r} is not a valid name")
        if self.state_dir_env is not None and self.state_dir_env in self.env:
            raise ValueError(f"{self.state_dir_env} is both --acp-env and --acp-state-dir-env")
        if self.max_state_bytes <= 0:
            raise ValueError(f"max_state_bytes must be positive, got {self.max_state_bytes}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")

    @classmethod
    def from_command_line(cls, command_line: str, **values: object) -> AcpSettings:
        """Settings for an agent given as one shell-quoted command line (`--acp-command`)."""
        return cls(command=tuple(shlex.split(command_line)), **values)  # type: ignore[arg-type]

    def excluded(self, relative: str) -> bool:
        """Whether the state file at `relative` (a POSIX path) stays behind."""
        return any(fnmatch.fnmatchcase(relative, pattern) for pattern in self.state_exclude)

    def shown(self) -> str:
        return shlex.join(self.command)


def parse_env(entries: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`KEY=VALUE` entries (`--acp-env`) as a mapping; raises ValueError for one without `=`."""
    env: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise ValueError(f"acp environment entry {entry!r} is not of the form KEY=VALUE")
        env[key] = value
    return env
