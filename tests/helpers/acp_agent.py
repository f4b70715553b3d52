"""A real ACP agent offline: the pinned codex-acp (@zed-industries/codex-acp, package.json)
pointed at the mock Responses API (`tests.helpers.codex_mock`).

codex-acp reads its configuration from $CODEX_HOME: a seed directory holds a config.toml whose
model provider is the mock (no key needed), and the command line turns off analytics, plugin
sync and the update check, so the agent calls nothing but the mock.
"""

from __future__ import annotations

import pathlib
import shlex

import pytest

from tests.helpers.codex_mock import MockResponses
from tether.execution_worker._acp_settings import AcpSettings

ROOT = pathlib.Path(__file__).resolve().parents[2]
_NATIVE = ROOT / "node_modules/@zed-industries/codex-acp-linux-x64/bin/codex-acp"
_LAUNCHER = ROOT / "node_modules/.bin/codex-acp"
CODEX_ACP = next((str(p) for p in (_NATIVE, _LAUNCHER) if p.is_file()), None)
needs_codex_acp = pytest.mark.skipif(
    CODEX_ACP is None, reason="codex-acp is not installed (run `npm ci`; `make test` does)"
)
#: No outbound calls of the agent's own: no analytics, no plugin sync, no update check.
QUIET = ("analytics.enabled=false", "features.plugins=false", "check_for_update_on_startup=false")
#: A model name codex-acp knows (it would otherwise open every turn with a message that it has
#: no metadata for the model); the mock answers whatever the name.
MODEL = "gpt-5.2"
#: What codex-acp rebuilds by itself: bundled skills, logs and its SQLite indexes (session/load
#: reads the rollout files under sessions/).
STATE_EXCLUDE = ("skills/*", "*.sqlite", "*.sqlite-*", "log/*", "tmp/*", ".tmp/*")


def command() -> tuple[str, ...]:
    assert CODEX_ACP is not None
    args = [CODEX_ACP]
    for override in QUIET:
        args += ["-c", override]
    return tuple(args)


def write_seed(mock: MockResponses, seed: pathlib.Path) -> pathlib.Path:
    """A CODEX_HOME seed whose config.toml sends all model traffic to `mock`."""
    seed.mkdir(parents=True, exist_ok=True)
    (seed / "config.toml").write_text(
        f'model = "{MODEL}"\nmodel_provider = "mock"\n\n[model_providers.mock]\n'
        f'name = "mock"\nbase_url = "{mock.base_url}"\nwire_api = "responses"\n'
        "request_max_retries = 0\nstream_max_retries = 0\n"
    )
    return seed


def settings_for(mock: MockResponses, tmp: pathlib.Path, *, carry_state: bool = True) -> AcpSettings:
    return AcpSettings(
        command=command(),
        state_dir_env="CODEX_HOME" if carry_state else None,
        state_seed=write_seed(mock, tmp / "acp-seed"),
        state_exclude=STATE_EXCLUDE,
        request_timeout_s=20.0,
        # Without a carried state directory, the agent's CODEX_HOME is still the mock's.
        env={} if carry_state else {"CODEX_HOME": str(write_seed(mock, tmp / "acp-home"))},
    )


def worker_flags(mock: MockResponses, tmp: pathlib.Path, *, carry_state: bool = True) -> list[str]:
    """`tether worker` flags for the acp runtime on codex-acp talking to `mock`."""
    settings = settings_for(mock, tmp, carry_state=carry_state)
    flags = ["--runtime", "acp", "--acp-command", shlex.join(settings.command)]
    for key, value in settings.env.items():
        flags += ["--acp-env", f"{key}={value}"]
    if settings.state_dir_env:
        flags += ["--acp-state-dir-env", settings.state_dir_env, "--acp-state-seed", str(settings.state_seed)]
        for pattern in settings.state_exclude:
            flags += ["--acp-state-exclude", pattern]
    return flags
