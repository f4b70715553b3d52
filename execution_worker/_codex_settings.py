"""How the Codex runtime runs `codex app-server`: `CodexSettings` (the worker's `--codex-*`
flags) and the fixed configuration every session's app-server gets.

Kept apart from the runtime so that `WorkerSettings` and the CLI can name them without loading
the Codex runtime itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SANDBOX_MODES = ("read-only", "workspace-write", "danger-full-access")
APPROVAL_POLICIES = ("untrusted", "on-request", "on-failure", "never")

#: Always passed: no plugin sync (the only outbound traffic of its own), no analytics, no
#: update check.
BASE_CONFIG = ("features.plugins=false", "analytics.enabled=false", "check_for_update_on_startup=false")
#: Copied from the user's CODEX_HOME into each session's, when present.
HOME_FILES = ("auth.json", "config.toml")


@dataclass(frozen=True)
class CodexSettings:
    """How the Codex runtime runs `codex app-server` (the worker's `--codex-*` flags)."""

    #: The `codex` executable: a path (made absolute here: app-server runs in the session's
    #: workspace), or a name looked up on PATH.
    bin: str = "codex"
    #: None: Codex's own default model.
    model: str | None = None
    sandbox: str = "workspace-write"
    approval_policy: str = "on-request"
    #: `KEY=TOML` overrides passed as `-c KEY=TOML`, after the built-in ones.
    config: tuple[str, ...] = ()
    #: Where a logged-in user's auth.json / config.toml are copied from; None: $CODEX_HOME,
    #: else ~/.codex.
    home_from: Path | None = None
    #: Deadline of every JSON-RPC request to app-server (initialize, thread/start, ...).
    request_timeout_s: float = 30.0
    #: A turn whose model provider stays unreachable fails after this many reconnects in a row
    #: (Codex's "Reconnecting... waiting for network" backs off but never gives up by itself).
    max_reconnects: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", tuple(self.config))
        if self.home_from is not None:
            object.__setattr__(self, "home_from", absolute_path(self.home_from))
        if not self.bin:
            raise ValueError("the codex binary must not be empty")
        if os.sep in self.bin or (os.altsep and os.altsep in self.bin):
            object.__setattr__(self, "bin", str(absolute_path(self.bin)))
        if self.sandbox not in SANDBOX_MODES:
            raise ValueError(f"codex sandbox must be one of {', '.join(SANDBOX_MODES)}, got {self.sandbox!r}")
        if self.approval_policy not in APPROVAL_POLICIES:
            raise ValueError(
                f"codex approval policy must be one of {', '.join(APPROVAL_POLICIES)}, got {self.approval_policy!r}"
            )
        for entry in self.config:
            key, sep, _ = entry.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"codex config override {entry!r} is not of the form KEY=TOML")
        if self.max_reconnects < 0:
            raise ValueError(f"max_reconnects must be 0 or more, got {self.max_reconnects}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")

    def resolved_home_from(self) -> Path:
        if self.home_from is not None:
            return self.home_from
        env_home = os.environ.get("CODEX_HOME")
        return absolute_path(env_home) if env_home else Path.home() / ".codex"

    def app_server_args(self) -> list[str]:
        """The command line of a session's `codex app-server`."""
        args = [self.bin, "app-server"]
        overrides = list(BASE_CONFIG)
        if self.model:
            overrides.append(f"model={_toml_string(self.model)}")
        overrides.extend(self.config)
        for override in overrides:
            args += ["-c", override]
        return args


def absolute_path(path: str | os.PathLike[str]) -> Path:
    """`path` made absolute against the current directory (and `~` expanded), without resolving
    symbolic links."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string
