"""The Claude Code runtime is checked when the worker starts (`claude_problem`): no binary, a
Claude Code outside the supported range, no credentials. Each is one line naming the fix; the
worker then does not offer the runtime, and exits 2 when nothing else is left. `tether doctor`
asks the same questions and dry-starts `claude -p`."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers.anthropic_mock import claude_bin
from tests.helpers.processes import ROOT
from tether.execution_worker import _process
from tether.execution_worker._claude_check import (
    CREDENTIAL_VARIABLES,
    PROVIDER_VARIABLES,
    claude_dry_start_problem,
    claude_problem,
)
from tether.execution_worker._claude_settings import ClaudeSettings
from tether.execution_worker._discovery import claude_runtime
from tether.execution_worker._settings import WorkerSettings
from tether.execution_worker.doctor import WorkerSetup, runtime_checks
from tether.execution_worker.runtime import Portability, runtime_portability

CLAUDE = claude_bin()
needs_claude = pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed (run `make test`)")


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*CREDENTIAL_VARIABLES, *PROVIDER_VARIABLES, "CLAUDE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)


def fake_claude(tmp_path: pathlib.Path, version_line: str) -> str:
    script = tmp_path / "fake-claude"
    script.write_text(f"#!/bin/sh\necho {json.dumps(version_line)}\n")
    script.chmod(0o755)
    return str(script)


def logged_in(tmp_path: pathlib.Path) -> pathlib.Path:
    config = tmp_path / "user-config"
    config.mkdir(exist_ok=True)
    (config / ".credentials.json").write_text("{}")
    return config


async def test_no_binary_names_the_flag_that_fixes_it(tmp_path: pathlib.Path) -> None:
    for missing in (str(tmp_path / "no-such-claude"), "no-such-claude-on-path"):
        problem = await claude_problem(ClaudeSettings(bin=missing), tmp_path / "scratch")
        assert problem is not None and "\n" not in problem
        assert f"no claude binary {missing!r}" in problem and "--claude-bin node_modules/.bin/claude" in problem


@pytest.mark.parametrize("line", ["2.0.77 (Claude Code)", "2.2.0 (Claude Code)", "3.1.0 (Claude Code)", "nope"])
async def test_a_claude_outside_the_supported_range_is_refused(tmp_path: pathlib.Path, line: str) -> None:
    config = logged_in(tmp_path)
    problem = await claude_problem(ClaudeSettings(bin=fake_claude(tmp_path, line), config_from=config), tmp_path)
    assert problem is not None and "--claude-bin node_modules/.bin/claude" in problem, problem
    if line[0].isdigit():
        assert f"claude {line.split()[0]}" in problem and "not a supported version (>=2.1.0,<2.2.0)" in problem
    ok = ClaudeSettings(bin=fake_claude(tmp_path, "2.1.5 (Claude Code)"), config_from=config)
    assert await claude_problem(ok, tmp_path) is None


@needs_claude
async def test_credentials_come_from_the_environment_a_login_or_a_key_helper(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "user-config"
    config.mkdir()
    settings = ClaudeSettings(bin=str(CLAUDE), config_from=config)
    problem = await claude_problem(settings, tmp_path / "scratch")
    assert problem is not None and "\n" not in problem
    assert "no credentials for Claude Code" in problem and str(config / ".credentials.json") in problem
    assert "claude auth login" in problem and "ANTHROPIC_API_KEY" in problem
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK"):
        monkeypatch.setenv(name, "1")
        assert await claude_problem(settings, tmp_path / "scratch") is None, name
        monkeypatch.delenv(name)
    (config / "settings.json").write_text(json.dumps({"apiKeyHelper": "echo key"}))
    assert await claude_problem(settings, tmp_path / "scratch") is None
    (config / "settings.json").unlink()
    logged_in(tmp_path)
    assert await claude_problem(settings, tmp_path / "scratch") is None
    # $CLAUDE_CONFIG_DIR is where the login is looked for by default.
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(config))
    assert await claude_problem(ClaudeSettings(bin=str(CLAUDE)), tmp_path / "scratch") is None
    assert not (config / ".claude.json").exists()  # --version ran with the scratch directory's


@needs_claude
async def test_a_dry_start_answers_initialize_and_a_bad_argument_is_named(tmp_path: pathlib.Path) -> None:
    assert await claude_dry_start_problem(ClaudeSettings(bin=str(CLAUDE)), tmp_path / "a") is None
    bad = ClaudeSettings(bin=str(CLAUDE), args=("--no-such-flag",))
    problem = await claude_dry_start_problem(bad, tmp_path / "b")
    assert problem is not None and "did not answer initialize" in problem and "--no-such-flag" in problem


@needs_claude
async def test_doctor_checks_the_claude_runtime(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = WorkerSetup(workdir=tmp_path, runtimes=("claude",), claude=ClaudeSettings(bin=str(CLAUDE)))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-doctor")
    checks = {c.name: c for c in await runtime_checks(setup)}
    assert [checks[n].status for n in ("runtime.claude.binary", "runtime.claude.credentials")] == ["PASS", "PASS"]
    assert checks["runtime.claude.dry_start"].status == "PASS"
    missing = WorkerSetup(workdir=tmp_path, runtimes=("claude",), claude=ClaudeSettings(bin=str(tmp_path / "x")))
    checks = {c.name: c for c in await runtime_checks(missing)}
    assert checks["runtime.claude.binary"].status == "FAIL"
    assert (
        checks["runtime.claude.binary"].fix == "install it with `npm ci` and pass --claude-bin node_modules/.bin/claude"
    )
    assert checks["runtime.claude.dry_start"].status == "SKIP"


async def test_the_worker_offers_claude_only_when_it_can_run(tmp_path: pathlib.Path) -> None:
    settings = WorkerSettings(workdir=tmp_path, runtimes=("shell", "claude"))
    config = logged_in(tmp_path)
    good = ClaudeSettings(bin=fake_claude(tmp_path, "2.1.332 (Claude Code)"), config_from=config, model="m")
    offered = await _process.offered_runtimes(settings, good)
    assert set(offered) == {"shell", "claude"}
    runtime = offered["claude"]()
    assert getattr(runtime, "settings", None) == good  # the worker's --claude-* settings reach it
    assert runtime_portability(offered["claude"]) is Portability.HISTORY is runtime_portability(claude_runtime)
    broken = ClaudeSettings(bin=str(tmp_path / "no-such-claude"))
    assert set(await _process.offered_runtimes(settings, broken)) == {"shell"}


def test_a_worker_with_nothing_else_to_offer_exits_2_with_one_line(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES + PROVIDER_VARIABLES}
    env["HOME"] = str(tmp_path)  # no ~/.claude login
    done = subprocess.run(
        [sys.executable, "-m", "tether.execution_worker", "--runtime", "claude", "--control-plane", "127.0.0.1:1"]
        + ["--workdir", str(tmp_path / "w"), "--claude-bin", fake_claude(tmp_path, "2.1.332 (Claude Code)")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert "the claude runtime cannot run here: no credentials for Claude Code" in line
    assert "run `claude auth login`" in line
