"""Whether the Claude Code runtime can work on this machine, checked once when the worker starts.

A worker that offers `claude` without a usable Claude Code would take turns only to fail them.
`claude_problem()` finds the mistakes a newcomer makes (no binary, a Claude Code outside the
range this runtime speaks, no credentials) and says in one line what to do; the worker then does
not offer the runtime.

`tether doctor` asks the same questions one at a time (`claude_binary_problem`,
`claude_credentials_problem`) and one more: whether `claude -p` starts the way a session's does
and answers the stream-json `initialize` request (`claude_dry_start_problem`), which reaches no
model.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from tether.execution_worker._claude_settings import ClaudeSettings

#: The Claude Code versions whose stream-json protocol this runtime speaks: [minimum, limit).
#: The tests pin 2.1.332 (package.json).
SUPPORTED_VERSIONS = ((2, 1, 0), (2, 2, 0))
#: How long `claude --version` may take.
VERSION_TIMEOUT_S = 20.0
#: How long a dry start's `initialize` may take, and claude then gets to exit.
DRY_START_TIMEOUT_S = 30.0
DRY_START_EXIT_GRACE_S = 2.0
#: Credentials Claude Code reads from the environment: an API key, a bearer token for a
#: gateway, a long-lived OAuth token (`claude setup-token`).
CREDENTIAL_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
#: Switches to a cloud provider, which authenticates with its own credentials.
PROVIDER_VARIABLES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")
FIX_BIN = "install it with `npm ci` and pass --claude-bin node_modules/.bin/claude"
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class ClaudeUnavailable(Exception):
    """The worker offers nothing but claude, and claude cannot run here; str() says what to do."""


def _supported() -> str:
    low, high = (".".join(map(str, v)) for v in SUPPORTED_VERSIONS)
    return f">={low},<{high}"


async def claude_problem(settings: ClaudeSettings, scratch: Path) -> str | None:
    """What keeps the Claude Code runtime from working here, with the fix, in one line; None
    when nothing does. `scratch` is a directory of the worker's own (Claude's config directory
    while it answers `--version`, so the user's is never touched)."""
    return await claude_binary_problem(settings, scratch) or claude_credentials_problem(settings)


async def claude_binary_problem(settings: ClaudeSettings, scratch: Path) -> str | None:
    """No binary, or a version outside the supported range."""
    found = _find_binary(settings.bin)
    if found is None:
        where = "found" if os.sep in settings.bin else "on PATH"
        return f"no claude binary {settings.bin!r} {where}: {FIX_BIN}"
    _make_dir(scratch)
    try:
        proc = await asyncio.create_subprocess_exec(
            found,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=settings.environment(scratch),
        )
    except OSError as error:
        return f"could not run {found!r}: {error}: {FIX_BIN}"
    try:
        async with asyncio.timeout(VERSION_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"`{found} --version` gave no answer within {VERSION_TIMEOUT_S:g}s: {FIX_BIN}"
    text = out.decode(errors="replace").strip()
    match = _VERSION.search(text)
    if proc.returncode != 0 or match is None:
        said = (text or err.decode(errors="replace").strip()).splitlines()[:1]
        return f"`{found} --version` did not name a version ({said[0] if said else 'no output'}): {FIX_BIN}"
    version = tuple(int(part) for part in match.groups())
    if not SUPPORTED_VERSIONS[0] <= version < SUPPORTED_VERSIONS[1]:
        return f"claude {match.group(0)} ({found}) is not a supported version ({_supported()}): {FIX_BIN}"
    return None


def claude_credentials_problem(settings: ClaudeSettings) -> str | None:
    """None when Claude Code has credentials: a key or token in the environment, a cloud
    provider's switch, or a login (or an `apiKeyHelper`) in the config directory the worker
    copies from. Nothing is sent anywhere."""
    if any(os.environ.get(name) for name in CREDENTIAL_VARIABLES + PROVIDER_VARIABLES):
        return None
    source = settings.resolved_config_from()
    if (source / ".credentials.json").is_file():
        return None
    try:
        user_settings = json.loads((source / "settings.json").read_text())
    except (OSError, ValueError):
        user_settings = {}
    if isinstance(user_settings, dict) and user_settings.get("apiKeyHelper"):
        return None
    return (
        f"no credentials for Claude Code (no {source / '.credentials.json'}, no ANTHROPIC_API_KEY): "
        "run `claude auth login` (or pass --claude-config-from DIR), or set ANTHROPIC_API_KEY"
    )


async def claude_dry_start_problem(settings: ClaudeSettings, scratch: Path) -> str | None:
    """Start `claude -p` the way a session does (its command line, a config directory of its
    own in `scratch`), ask `initialize`, and stop it: what went wrong with the fix in one line,
    or None. Nothing reaches the model."""
    # Imported here: the worker's own start check never needs them.
    from tether.execution_worker._claude_protocol import ClaudeChannel, ClaudeError
    from tether.execution_worker._codex_process import CodexProcess

    _make_dir(scratch)
    args = settings.command(str(uuid.uuid4()), resume=False)
    by_hand = f"run `{' '.join(args)}` by hand to see why (and check --claude-arg)"
    try:
        proc = await CodexProcess.spawn(args, cwd=scratch, env=settings.environment(scratch))
    except OSError as error:
        return f"could not run {settings.bin!r}: {error}: {FIX_BIN}"
    channel = ClaudeChannel(
        proc,
        session_id="dry-start",
        request_timeout_s=DRY_START_TIMEOUT_S,
        on_message=lambda message: None,  # nothing but initialize's answer is awaited
        on_exit=lambda: None,
    )
    channel.closing = True  # an exit is this check's answer, not something to log
    try:
        await channel.request("initialize")
    except ClaudeError as error:
        return f"`claude -p` did not answer initialize: {error}: {by_hand}"
    finally:
        await channel.close(DRY_START_EXIT_GRACE_S)
    return None


def _find_binary(name: str) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
