"""The Codex runtime is checked when the worker starts (`codex_problem`): no binary, a Codex
outside the supported range, no credentials for the model provider. Each is one line naming the
fix; a worker then does not offer the runtime (tests/e2e/test_codex_e2e.py runs that)."""

from __future__ import annotations

import json
import pathlib

import pytest

from tests.helpers.codex_mock import MockResponses, codex_bin
from tether.execution_worker._codex_check import SUPPORTED_VERSIONS, codex_problem
from tether.execution_worker._codex_settings import CodexSettings

CODEX = codex_bin()
needs_codex = pytest.mark.skipif(CODEX is None, reason="the pinned Codex CLI is not installed (run `make test`)")


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_HOME"):
        monkeypatch.delenv(name, raising=False)


def fake_codex(tmp_path: pathlib.Path, version_line: str) -> str:
    script = tmp_path / "fake-codex"
    script.write_text(f"#!/bin/sh\necho {json.dumps(version_line)}\n")
    script.chmod(0o755)
    return str(script)


async def test_no_binary_names_the_flag_that_fixes_it(tmp_path: pathlib.Path) -> None:
    for missing in (str(tmp_path / "no-such-codex"), "no-such-codex-on-path"):
        problem = await codex_problem(CodexSettings(bin=missing), tmp_path / "scratch")
        assert problem is not None and "\n" not in problem
        assert f"no codex binary {missing!r}" in problem and "--codex-bin node_modules/.bin/codex" in problem


@pytest.mark.parametrize("line", ["codex-cli 0.150.0", "codex-cli 0.170.0", "codex-cli 1.0.0", "something else"])
async def test_a_codex_outside_the_supported_range_is_refused(tmp_path: pathlib.Path, line: str) -> None:
    settings = CodexSettings(bin=fake_codex(tmp_path, line), home_from=tmp_path)
    (tmp_path / "auth.json").write_text("{}")
    problem = await codex_problem(settings, tmp_path / "scratch")
    assert problem is not None and "--codex-bin node_modules/.bin/codex" in problem, problem
    if line.startswith("codex-cli"):
        assert f"codex {line.split()[1]}" in problem and "not a supported version (>=0.169.0,<0.170.0)" in problem
    # A supported one passes.
    low = ".".join(map(str, SUPPORTED_VERSIONS[0]))
    ok = CodexSettings(bin=fake_codex(tmp_path, f"codex-cli {low}"), home_from=tmp_path)
    assert await codex_problem(ok, tmp_path / "scratch") is None


@needs_codex
async def test_no_credentials_names_codex_login_and_the_api_key(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "user-home"
    home.mkdir()
    settings = CodexSettings(bin=str(CODEX), home_from=home)
    problem = await codex_problem(settings, tmp_path / "scratch")
    assert problem is not None and "\n" not in problem
    assert "no credentials for the 'openai' model provider" in problem
    assert "`codex login`" in problem and "OPENAI_API_KEY" in problem
    # The version check ran with a CODEX_HOME of the worker's own.
    assert (tmp_path / "scratch").is_dir() and not (home / "tmp").exists()

    # Any one of them is enough.
    (home / "auth.json").write_text("{}")
    assert await codex_problem(settings, tmp_path / "scratch") is None
    (home / "auth.json").unlink()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert await codex_problem(settings, tmp_path / "scratch") is None


@needs_codex
async def test_a_provider_of_its_own_needs_only_its_own_key(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MockResponses() as mock:  # keyless: the tests' mock provider
        settings = CodexSettings(bin=str(CODEX), config=mock.codex_config(), home_from=tmp_path / "none")
        assert await codex_problem(settings, tmp_path / "scratch") is None
    keyed = CodexSettings(
        bin=str(CODEX),
        config=(
            "model_provider=corp",
            'model_providers.corp={name="corp", base_url="http://x/v1", env_key="CORP_KEY"}',
        ),
        home_from=tmp_path / "none",
    )
    problem = await codex_problem(keyed, tmp_path / "scratch")
    assert problem == "model provider 'corp' reads its API key from $CORP_KEY, which is not set: set CORP_KEY"
    monkeypatch.setenv("CORP_KEY", "k")
    assert await codex_problem(keyed, tmp_path / "scratch") is None
    # The user's config.toml counts too (it is copied into every session's CODEX_HOME).
    home = tmp_path / "user-home"
    home.mkdir()
    (home / "config.toml").write_text('model_provider = "ollama"\n')
    assert await codex_problem(CodexSettings(bin=str(CODEX), home_from=home), tmp_path / "scratch") is None
