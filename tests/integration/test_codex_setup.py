"""The Codex runtime's settings: defaults and validation, the worker flags that build them,
paths relative to where the worker started, and the session's Codex home (a user's login copied
in), the last two against the real `codex app-server` and a mock Responses API."""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

import pytest
from click.testing import CliRunner

from tests.helpers.codex_mock import MockResponses
from tests.helpers.codex_runtime import CODEX, needs_codex, run, settings_for
from tether.execution_worker._codex import CodexRuntime, CodexSettings
from tether.execution_worker._settings import WorkerSettings
from tether.execution_worker.runtime import TurnCompleted


@needs_codex
async def test_a_users_login_is_copied_into_the_session_home(mock_api: MockResponses, tmp_path: pathlib.Path) -> None:
    user_home = tmp_path / "user-codex-home"
    user_home.mkdir()
    (user_home / "config.toml").write_text("# the user's config\n")
    (user_home / "auth.json").write_text('{"OPENAI_API_KEY": "sk-not-used"}')
    (user_home / "auth.json").chmod(0o600)
    (user_home / "history.jsonl").write_text("")  # not copied: only the login and the config
    runtime = CodexRuntime(settings_for(mock_api, tmp_path, home_from=user_home))
    try:
        await runtime.start("ses_home", tmp_path, [])
        home = runtime.codex_home
        assert home is not None
        assert (home / "config.toml").read_text() == "# the user's config\n"
        assert (home / "auth.json").stat().st_mode & 0o777 == 0o600
        assert not (home / "history.jsonl").exists()
        assert (await run(runtime, "hello"))[-1] == TurnCompleted()
    finally:
        await runtime.close()


def test_settings_defaults_and_validation() -> None:
    runtime = CodexRuntime()  # a plugin-style factory call takes no arguments
    assert runtime.settings == CodexSettings()
    assert runtime.settings.sandbox == "workspace-write" and runtime.settings.approval_policy == "on-request"
    assert runtime.runtime_thread_id == "" and runtime.export_history() == []
    with pytest.raises(ValueError, match="sandbox"):
        CodexSettings(sandbox="everything")
    with pytest.raises(ValueError, match="approval policy"):
        CodexSettings(approval_policy="sometimes")
    with pytest.raises(ValueError, match="KEY=TOML"):
        CodexSettings(config=("no-equals-sign",))


def test_worker_flags_build_codex_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    import logging

    import uvloop

    from tether.execution_worker import _process, cli

    captured: dict[str, Any] = {}

    def fake_serve(settings: Any, *runtime_settings: Any) -> Any:
        captured["settings"] = settings
        return asyncio.sleep(0, result=0)

    def fake_run(coroutine: Any) -> int:
        coroutine.close()
        return 0

    # Only the settings the flags build are under test: no worker runs, logging stays as it is.
    monkeypatch.setattr(_process, "serve", fake_serve)
    monkeypatch.setattr(uvloop, "run", fake_run)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    env = {
        # One override per line: TOML values may hold spaces.
        "TETHER_CODEX_CONFIG": 'model_provider="mock"\nmodel_providers.mock={name="mock", base_url="http://127.0.0.1:1/v1"}\n',
        "TETHER_TURN_TIMEOUT_S": "60",
    }
    args = [
        "--workdir",
        str(tmp_path),
        "--codex-bin",
        "/opt/codex",
        "--codex-model",
        "gpt-5.5",
        "--codex-sandbox",
        "read-only",
        "--codex-approval-policy",
        "never",
        "--codex-home-from",
        str(tmp_path),
    ]
    result = CliRunner().invoke(cli.worker, args, env=env)
    assert result.exit_code == 0, result.output
    settings = captured["settings"]
    assert settings.turn_timeout_s == 60.0
    assert settings.codex == CodexSettings(
        bin="/opt/codex",
        model="gpt-5.5",
        sandbox="read-only",
        approval_policy="never",
        config=('model_provider="mock"', 'model_providers.mock={name="mock", base_url="http://127.0.0.1:1/v1"}'),
        home_from=tmp_path,
    )
    result = CliRunner().invoke(cli.worker, ["--workdir", str(tmp_path)])
    assert result.exit_code == 0 and captured["settings"].codex == CodexSettings()
    assert captured["settings"].turn_timeout_s == 1800.0
    result = CliRunner().invoke(cli.worker, ["--workdir", str(tmp_path), "--codex-config", "nokey"])
    assert result.exit_code == 2 and "KEY=TOML" in result.output


@needs_codex
async def test_relative_paths_work_although_app_server_runs_in_the_workspace(
    mock_api: MockResponses, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tether worker --workdir ./codex-worker --codex-bin node_modules/.bin/codex`: both paths
    are relative to where the worker started, not to the session's workspace."""
    monkeypatch.chdir(tmp_path)
    assert CODEX is not None
    settings = WorkerSettings(
        workdir=pathlib.Path("codex-worker"),
        runtimes=("codex",),
        codex=settings_for(mock_api, tmp_path, bin=os.path.relpath(CODEX, tmp_path), home_from="no-user-home"),
    )
    assert settings.workdir == tmp_path / "codex-worker"
    assert settings.codex.bin == CODEX and settings.codex.home_from == tmp_path / "no-user-home"
    runtime = CodexRuntime(settings.codex)
    try:
        await runtime.start("ses_rel", settings.workdir, [])
        events = await run(runtime, "hello from a relative workdir")
        assert events[-1] == TurnCompleted(), events[-1]
        assert runtime.codex_home == tmp_path / "codex-worker" / "sessions" / "ses_rel" / "codex-home"
    finally:
        await runtime.close()
    # Given a relative workdir directly, the runtime makes it absolute itself.
    direct = CodexRuntime(settings_for(mock_api, tmp_path))
    try:
        await direct.start("ses_rel2", pathlib.Path("elsewhere"), [])
        assert (await run(direct, "and from another"))[-1] == TurnCompleted()
        assert direct.codex_home == tmp_path / "elsewhere" / "sessions" / "ses_rel2" / "codex-home"
    finally:
        await direct.close()


def test_worker_settings_make_every_path_absolute(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = WorkerSettings(
        workdir=pathlib.Path("./w/../w2"),
        offer_trace=pathlib.Path("trace.txt"),
        tls_ca_file="ca.pem",
        tls_cert_file="cert.pem",
        tls_key_file="key.pem",
        codex=CodexSettings(bin="./bin/codex", home_from=pathlib.Path("home")),
    )
    assert settings.workdir == tmp_path / "w2" and settings.offer_trace == tmp_path / "trace.txt"
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (
        str(tmp_path / "ca.pem"),
        str(tmp_path / "cert.pem"),
        str(tmp_path / "key.pem"),
    )
    assert settings.codex.bin == str(tmp_path / "bin" / "codex") and settings.codex.home_from == tmp_path / "home"
    assert CodexSettings(bin="codex").bin == "codex"  # a name is looked up on PATH, as given
    monkeypatch.setenv("CODEX_HOME", "relative-home")
    assert CodexSettings().resolved_home_from() == tmp_path / "relative-home"
