"""Whether the Codex runtime can work on this machine, checked once when the worker starts.

A worker that offers `codex` without a usable Codex would take turns only to fail them with a
misleading "could not rehydrate session", or leave them retrying an unreachable model for half
an hour. `codex_problem()` finds the three mistakes a newcomer makes (no binary, a Codex outside
the range this runtime speaks, no credentials for the model provider) and says in one line what
to do; the worker then does not offer the runtime.

`tether doctor` asks the same questions one at a time (`codex_binary_problem`,
`codex_credentials_problem`) and one more, which the worker's start leaves to the first
session: whether `codex app-server` starts and answers `initialize` (`codex_dry_start_problem`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

from tether.execution_worker._codex_errors import CodexError
from tether.execution_worker._codex_settings import CodexSettings

#: The Codex versions whose app-server protocol this runtime speaks: [minimum, limit). The tests
#: pin 0.169.0 (package.json); the protocol is experimental and changes between minor versions.
SUPPORTED_VERSIONS = ((0, 169, 0), (0, 170, 0))
#: How long `codex --version` may take (the npm launcher starts node first).
VERSION_TIMEOUT_S = 20.0
#: How long a dry start's `initialize` may take, and app-server then gets to exit.
DRY_START_TIMEOUT_S = 20.0
DRY_START_EXIT_GRACE_S = 2.0
#: Model providers built into Codex that need no key.
_KEYLESS_PROVIDERS = frozenset({"oss", "ollama", "lmstudio"})
_FIX_BIN = "install it with `npm ci` and pass --codex-bin node_modules/.bin/codex"
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class CodexUnavailable(Exception):
    """The worker offers nothing but codex, and codex cannot run here; str() says what to do."""


def _supported() -> str:
    low, high = (".".join(map(str, v)) for v in SUPPORTED_VERSIONS)
    return f">={low},<{high}"


async def codex_problem(settings: CodexSettings, scratch: Path) -> str | None:
    """What keeps the Codex runtime from working here, with the fix, in one line; None when
    nothing does. `scratch` is a directory of the worker's own: even `codex --version` writes
    into its CODEX_HOME."""
    return await codex_binary_problem(settings, scratch) or codex_credentials_problem(settings)


async def codex_binary_problem(settings: CodexSettings, scratch: Path) -> str | None:
    """The binary half of `codex_problem`: no binary, or a version outside the supported range."""
    found = _find_binary(settings.bin)
    if found is None:
        where = "found" if os.sep in settings.bin else "on PATH"
        return f"no codex binary {settings.bin!r} {where}: {_FIX_BIN}"
    _make_dir(scratch)
    version, problem = await _version(found, scratch)
    if problem is not None:
        return problem
    if not SUPPORTED_VERSIONS[0] <= version < SUPPORTED_VERSIONS[1]:
        shown = ".".join(map(str, version))
        return f"codex {shown} ({found}) is not a supported version ({_supported()}): {_FIX_BIN}"
    return None


async def codex_dry_start_problem(settings: CodexSettings, scratch: Path) -> str | None:
    """Start `codex app-server` the way a session does (its command line, a CODEX_HOME of its
    own in `scratch`), ask `initialize`, and stop it: what went wrong with the fix in one line,
    or None. Nothing reaches the model provider."""
    # Imported here: the worker's own start check (and a worker without codex) never needs them.
    from tether.execution_worker._codex_process import CodexProcess
    from tether.execution_worker._codex_rpc import CodexRpc

    _make_dir(scratch)
    # A session's CODEX_HOME holds the user's config.toml (its model providers, -c defaults);
    # a broken one stops app-server at start. auth.json is not needed to answer initialize.
    config = settings.resolved_home_from() / "config.toml"
    if config.is_file():
        shutil.copy2(config, scratch / "config.toml")
    args = settings.app_server_args()
    by_hand = f"run `{' '.join(args)}` by hand to see why (and check --codex-config)"
    try:
        proc = await CodexProcess.spawn(args, cwd=scratch, env={**os.environ, "CODEX_HOME": str(scratch)})
    except OSError as error:
        return f"could not run {settings.bin!r} app-server: {error}: {_FIX_BIN}"
    rpc = CodexRpc(
        proc,
        session_id="dry-start",
        request_timeout_s=DRY_START_TIMEOUT_S,
        on_message=lambda message: None,  # nothing but initialize's answer is awaited
        on_exit=lambda: None,
    )
    rpc.closing = True  # an exit is this check's answer, not something to log
    try:
        await rpc.request(
            "initialize",
            {"clientInfo": {"name": "tether", "title": None, "version": _tether_version()}, "capabilities": {}},
        )
    except CodexError as error:
        return f"`codex app-server` did not answer initialize: {error}: {by_hand}"
    finally:
        await rpc.close(DRY_START_EXIT_GRACE_S)
    return None


def _tether_version() -> str:
    try:
        return importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _find_binary(name: str) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


async def _version(binary: str, scratch: Path) -> tuple[tuple[int, int, int], str | None]:
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "CODEX_HOME": str(scratch)},
        )
    except OSError as error:
        return (0, 0, 0), f"could not run {binary!r}: {error}: {_FIX_BIN}"
    try:
        async with asyncio.timeout(VERSION_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return (0, 0, 0), f"`{binary} --version` gave no answer within {VERSION_TIMEOUT_S:g}s: {_FIX_BIN}"
    text = out.decode(errors="replace").strip()
    match = _VERSION.search(text)
    if proc.returncode != 0 or match is None:
        said = (text or err.decode(errors="replace").strip()).splitlines()[:1]
        return (
            0,
            0,
            0,
        ), f"`{binary} --version` did not name a version ({said[0] if said else 'no output'}): {_FIX_BIN}"
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch), None


def codex_credentials_problem(settings: CodexSettings) -> str | None:
    """The credentials half of `codex_problem`: None when the configured model provider has
    what it needs to authenticate (nothing is sent to it)."""
    home = settings.resolved_home_from()
    config = _effective_config(home / "config.toml", settings.config)
    provider = str(config.get("model_provider") or "openai")
    providers = config.get("model_providers")
    defined = providers.get(provider) if isinstance(providers, dict) else None
    if isinstance(defined, dict):
        env_key = defined.get("env_key")
        if isinstance(env_key, str) and env_key and not os.environ.get(env_key):
            return f"model provider {provider!r} reads its API key from ${env_key}, which is not set: set {env_key}"
        if not defined.get("requires_openai_auth"):
            return None
    elif provider in _KEYLESS_PROVIDERS:
        return None
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("CODEX_API_KEY") or (home / "auth.json").is_file():
        return None
    return (
        f"no credentials for the {provider!r} model provider (no {home / 'auth.json'}, no OPENAI_API_KEY): "
        "run `codex login`, or set OPENAI_API_KEY"
    )


def _effective_config(config_toml: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    """The user's config.toml with the `-c KEY=TOML` overrides on top, as far as they parse
    (Codex reports what does not)."""
    config: dict[str, Any] = {}
    try:
        config = tomllib.loads(config_toml.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        pass
    for override in overrides:
        key, _, value = override.partition("=")
        try:
            parsed = tomllib.loads(f"{key.strip()} = {value.strip()}")
        except tomllib.TOMLDecodeError:
            try:  # Codex reads a value that is not TOML as a string, as in model_provider=mock
                parsed = tomllib.loads(f"{key.strip()} = {json.dumps(value.strip())}")
            except tomllib.TOMLDecodeError:
                continue
        _merge(config, parsed)
    return config


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
