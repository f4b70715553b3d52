"""`tether conformance --runtime`: a runtime that moves the way it declares passes; one whose
declaration is a lie fails, and the verdict names what it did instead."""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any

from tether.cli._runtime_kit import run_runtime_kit
from tether.execution_worker import Portability, RuntimeFactory, ShellRuntime, declaring_portability


class CarriesState(ShellRuntime):
    """Honest `state`: carries a note in each snapshot and needs it back to continue."""

    portability = Portability.STATE

    def __init__(self) -> None:
        super().__init__()
        self.note = ""

    def runtime_metadata(self) -> dict[str, Any]:
        return {"note": "kept"}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.note = state.get("note", "")

    async def start(self, session_id: str, workdir: Path, history: list) -> None:  # type: ignore[override]
        if history and not self.note:
            raise RuntimeError("no note in the state: this session cannot continue here")
        await super().start(session_id, workdir, history)


class CarriesNothing(ShellRuntime):
    """Claims `state` but its snapshots carry nothing and it starts from anything."""

    portability = Portability.STATE

    def runtime_metadata(self) -> dict[str, Any]:
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        pass


@declaring_portability(Portability.NONE)
class HonestNone(ShellRuntime):
    async def start(self, session_id: str, workdir: Path, history: list) -> None:  # type: ignore[override]
        if history:
            raise RuntimeError("this agent cannot continue a session it did not start")
        await super().start(session_id, workdir, history)


@declaring_portability(Portability.NONE)
class StartsEmpty(ShellRuntime):
    """Claims `none` but silently starts with a history it cannot have."""


class ForgetsHistory(ShellRuntime):
    """Claims `history` (the default) but drops what it is given."""

    async def start(self, session_id: str, workdir: Path, history: list) -> None:  # type: ignore[override]
        await super().start(session_id, workdir, [])


async def _verdict(factory: RuntimeFactory, tmp_path: pathlib.Path) -> tuple[int, list[str]]:
    lines: list[str] = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    code = await run_runtime_kit("under-test", factory, "echo hello", tmp_path, lines.append)
    return code, lines


async def test_runtimes_that_move_as_declared_pass(tmp_path: pathlib.Path) -> None:
    for factory, moves in ((ShellRuntime, "history"), (CarriesState, "state"), (HonestNone, "none")):
        code, lines = await _verdict(factory, tmp_path / moves)
        assert code == 0, lines
        assert lines[0] == f"runtime 'under-test' declares portability {moves}"
        assert [line.split()[:2] for line in lines[1:]] == [
            ["PASS", "declared"],
            ["PASS", "turn"],
            ["PASS", moves],
            ["PASS", "fails-closed"],
        ]


async def test_a_state_runtime_that_carries_nothing_fails(tmp_path: pathlib.Path) -> None:
    code, lines = await _verdict(CarriesNothing, tmp_path)
    assert code == 1
    assert "FAIL state: the snapshot's runtime metadata is empty: runtime_metadata() carries no state" in lines
    assert any(line.startswith("FAIL fails-closed: declared state but started with history") for line in lines)


async def test_a_none_runtime_that_starts_on_history_fails_closed_check(tmp_path: pathlib.Path) -> None:
    code, lines = await _verdict(StartsEmpty, tmp_path)
    assert code == 1
    assert any(line.startswith("PASS none") for line in lines)  # the control plane refused the move
    assert any(line.startswith("FAIL fails-closed: declared none but started with history") for line in lines)


async def test_a_history_runtime_that_drops_its_history_fails(tmp_path: pathlib.Path) -> None:
    code, lines = await _verdict(ForgetsHistory, tmp_path)
    assert code == 1
    assert any(line.startswith("FAIL history: after a turn on the new worker the runtime exports") for line in lines), (
        lines
    )


def test_the_command_wants_exactly_one_of_a_worker_or_a_runtime(tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from tether.cli.conformance import conformance

    runner = CliRunner()
    neither = runner.invoke(conformance, ["--keep", str(tmp_path)])
    assert neither.exit_code == 2 and "give exactly one of --worker-cmd COMMAND and --runtime NAME" in neither.output
    both = runner.invoke(conformance, ["--worker-cmd", "true", "--runtime", "shell", "--keep", str(tmp_path)])
    assert both.exit_code == 2
    unknown = runner.invoke(conformance, ["--runtime", "nope", "--keep", str(tmp_path)])
    assert unknown.exit_code == 2 and "no runtime 'nope' here; this installation offers" in unknown.output
    assert "shell" in unknown.output
