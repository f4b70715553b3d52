"""The `tether` command's rough edges, against a real in-process control plane: `tether pair`
prints only the code on stdout, `--control-plane` works after the subcommand too, a negative
`--after` is a usage error, and every flag that reads a `TETHER_*` variable names it in --help.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Iterator

import click
import pytest
from click.testing import CliRunner, Result

from tests.helpers.processes import FAST
from tether.cli._group import main as tether
from tether.control_plane import ControlPlane, Settings

UNREACHABLE = "127.0.0.1:1"


@pytest.fixture
async def target(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    settings = Settings(port=0, db=str(tmp_path / "tether.db"), timings=FAST, dev_owner="local")
    async with ControlPlane(settings) as cp:
        yield f"127.0.0.1:{cp.port}"


async def _tether(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run `tether ARGS` off the loop that serves the control plane."""
    return await asyncio.to_thread(CliRunner().invoke, tether, list(args), env=env)


async def test_pair_prints_only_the_code_on_stdout(target: str) -> None:
    result = await _tether("pair", "--control-plane", target)
    assert result.exit_code == 0, result.output
    code = result.stdout.strip()
    assert result.stdout == code + "\n" and " " not in code, result.stdout  # CODE=$(tether pair) works
    assert "works once" in result.stderr and "owner local" in result.stderr


async def test_control_plane_is_accepted_after_the_subcommand_and_wins(target: str) -> None:
    created = await _tether("session", "create", "--runtime", "shell", "--control-plane", target)
    assert created.exit_code == 0, created.output
    session_id = created.stdout.strip()
    # Given after the subcommand, it wins over the group's flag and over the environment.
    got = await _tether(
        "session",
        "--control-plane",
        UNREACHABLE,
        "get",
        session_id,
        "--control-plane",
        target,
        "--timeout-s",
        "5",
        env={"TETHER_CONTROL_PLANE": UNREACHABLE},
    )
    assert got.exit_code == 0, got.output
    assert f"session_id: {session_id}" in got.stdout
    # And the group's flag still works on its own.
    listed = await _tether("session", "--control-plane", target, "list")
    assert listed.exit_code == 0 and session_id in listed.stdout


async def test_a_negative_after_is_a_usage_error_not_a_traceback(target: str) -> None:
    created = await _tether("session", "--control-plane", target, "create", "--runtime", "shell")
    result = await _tether("session", "--control-plane", target, "events", created.stdout.strip(), "--after", "-5")
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--after'" in result.stderr and "-5" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _commands(command: click.Command, ctx: click.Context) -> Iterator[tuple[str, click.Command, click.Context]]:
    yield ctx.command_path, command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            yield from _commands(sub, click.Context(sub, info_name=name, parent=ctx))


def test_every_flag_that_reads_an_environment_variable_names_it_in_help() -> None:
    unnamed = []
    checked = 0
    for path, command, ctx in _commands(tether, click.Context(tether, info_name="tether")):
        for param in command.params:
            if not isinstance(param, click.Option) or not param.envvar:
                continue
            checked += 1
            record = param.get_help_record(ctx)
            envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
            if record is None or not all(name in record[1] for name in envvars):
                unnamed.append(f"{path} {param.opts[0]}")
    assert checked > 40  # serve, worker, session, pair, keys, db all walked
    assert unnamed == []
