"""How the Claude Code runtime runs `claude`: `ClaudeSettings` (the worker's `--claude-*` flags),
the fixed command line and environment every session's process gets, and Claude's session id
for a Tether session.

Kept apart from the runtime so that the CLI and `tether doctor` can name them without loading
the runtime itself.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from tether.execution_worker._codex_settings import absolute_path

#: `--permission-mode` values the pinned Claude Code (2.1.x) takes; None leaves Claude's own
#: default, which asks before anything that is not read-only.
PERMISSION_MODES = ("acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan")
#: Copied from the user's Claude config directory into each session's, when present: the
#: login (`claude auth login` keeps it in `.credentials.json`) and the user's settings.
CONFIG_FILES = (".credentials.json", "settings.json")
#: Always set: no telemetry, no error reports, no auto-update, no traffic beyond the model API.
QUIET_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
#: Tether session ids are "ses_" and a ULID (128 bits in 26 Crockford base32 characters).
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Ids of another form map to a UUID in this namespace (uuid5), the same on every worker.
_SESSION_NAMESPACE = uuid.UUID("0d7e1f3a-52c4-4c8e-9a51-7e7a1e7e5c1d")


@dataclass(frozen=True)
class ClaudeSettings:
    """How the Claude Code runtime runs `claude` (the worker's `--claude-*` flags)."""

    #: The `claude` executable: a path (made absolute here: claude runs in the session's
    #: workspace), or a name looked up on PATH.
    bin: str = "claude"
    #: None: Claude Code's own default model.
    model: str | None = None
    #: None: Claude Code's own default (ask before acting).
    permission_mode: str | None = None
    #: Tool rules allowed without asking (`--allowed-tools`), e.g. "Bash(git *)" or "Edit".
    allowed_tools: tuple[str, ...] = ()
    #: Further arguments passed to `claude` as they are, after the runtime's own.
    args: tuple[str, ...] = ()
    #: Where a logged-in user's `.credentials.json` and `settings.json` are copied from; None:
    #: $CLAUDE_CONFIG_DIR, else ~/.claude.
    config_from: Path | None = None
    #: Retries of a failed model request (CLAUDE_CODE_MAX_RETRIES); None: Claude's own (10,
    #: with backoff, so a dead model API fails a turn only after minutes).
    max_retries: int | None = None
    #: Deadline of every control request to claude (initialize, interrupt).
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_tools", tuple(self.allowed_tools))
        object.__setattr__(self, "args", tuple(self.args))
        if self.config_from is not None:
            object.__setattr__(self, "config_from", absolute_path(self.config_from))
        if not self.bin:
            raise ValueError("the claude binary must not be empty")
        if os.sep in self.bin or (os.altsep and os.altsep in self.bin):
            object.__setattr__(self, "bin", str(absolute_path(self.bin)))
        if self.permission_mode is not None and self.permission_mode not in PERMISSION_MODES:
            raise ValueError(
                f"claude permission mode must be one of {', '.join(PERMISSION_MODES)}, got {self.permission_mode!r}"
            )
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")

    def resolved_config_from(self) -> Path:
        if self.config_from is not None:
            return self.config_from
        env_dir = os.environ.get("CLAUDE_CONFIG_DIR")
        return absolute_path(env_dir) if env_dir else Path.home() / ".claude"

    def command(self, claude_session_id: str, *, resume: bool) -> list[str]:
        """The command line of a session's `claude`: headless, stream-json both ways, partial
        messages on, permission prompts asked over stdio; `--resume` continues the transcript
        in the session's config directory, `--session-id` starts it."""
        args = [
            self.bin,
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--permission-prompt-tool",
            "stdio",
        ]
        args += ["--resume", claude_session_id] if resume else ["--session-id", claude_session_id]
        if self.model:
            args += ["--model", self.model]
        if self.permission_mode:
            args += ["--permission-mode", self.permission_mode]
        if self.allowed_tools:
            args += ["--allowed-tools", *self.allowed_tools]
        args.extend(self.args)
        return args

    def environment(self, config_dir: Path) -> dict[str, str]:
        """The worker's environment (where ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL come from),
        the session's own CLAUDE_CONFIG_DIR, and the switches that keep Claude Code quiet."""
        env = {**os.environ, "CLAUDE_CONFIG_DIR": str(config_dir), **QUIET_ENV}
        if self.max_retries is not None:
            env["CLAUDE_CODE_MAX_RETRIES"] = str(self.max_retries)
        return env


def claude_session_id(session_id: str) -> str:
    """Claude's `--session-id` (a UUID) for a Tether session: the session id's own 128 bits when
    it is "ses_" and a ULID (so the two name each other), the id itself when it is a UUID, else
    a UUID derived from it. The same on every worker."""
    prefix, _, body = session_id.partition("_")
    if prefix == "ses" and len(body) == 26 and all(c in _CROCKFORD for c in body):
        value = 0
        for char in body:
            value = value * 32 + _CROCKFORD.index(char)
        if value < 1 << 128:
            return str(uuid.UUID(int=value))
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        return str(uuid.uuid5(_SESSION_NAMESPACE, session_id))
