"""The shell runtime on its own: streaming, exit codes, interrupts, history and rehydration."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tether.execution_worker import (
    HistoryItem,
    HistoryRole,
    Output,
    OutputStream,
    ShellRuntime,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)


@pytest.fixture
async def shell(tmp_path: Path):
    runtime = ShellRuntime()
    await runtime.start("ses_test", tmp_path, [])
    yield runtime
    await runtime.close()


async def run(runtime: ShellRuntime, command: str, turn_id: str = "trn_1") -> list:
    return [event async for event in runtime.run_turn(turn_id, command)]


def text_of(events: list, stream: OutputStream) -> str:
    return "".join(e.text for e in events if isinstance(e, Output) and e.stream is stream)


async def test_stdout_and_stderr_are_streamed_apart(shell: ShellRuntime) -> None:
    events = await run(shell, "echo out; echo err >&2; echo more")
    assert text_of(events, OutputStream.STDOUT) == "out\nmore\n"
    assert text_of(events, OutputStream.STDERR) == "err\n"
    assert events[-1] == TurnCompleted(exit_code=0)
    assert all(isinstance(e, Output) for e in events[:-1])


async def test_runs_in_the_session_workspace(shell: ShellRuntime, tmp_path: Path) -> None:
    events = await run(shell, "pwd; echo hi > f.txt")
    workspace = tmp_path / "sessions" / "ses_test"
    assert text_of(events, OutputStream.STDOUT).strip() == str(workspace)
    assert (workspace / "f.txt").read_text() == "hi\n"


async def test_output_arrives_before_the_command_ends(shell: ShellRuntime) -> None:
    turn = shell.run_turn("trn_1", "echo first; sleep 30")
    first = await asyncio.wait_for(anext(turn), timeout=5)
    assert first == Output(OutputStream.STDOUT, "first\n")
    await shell.interrupt("test over")
    rest = [e async for e in turn]
    assert rest[-1] == TurnInterrupted("test over")


@pytest.mark.parametrize("code", [0, 1, 3, 255])
async def test_exit_code_is_reported(shell: ShellRuntime, code: int) -> None:
    events = await run(shell, f"exit {code}")
    assert events == [TurnCompleted(exit_code=code)]


async def test_killed_by_signal_reports_128_plus_signal(shell: ShellRuntime) -> None:
    events = await run(shell, "kill -9 $$")
    assert events[-1] == TurnCompleted(exit_code=137)


async def test_interrupt_stops_a_long_command_fast(shell: ShellRuntime) -> None:
    turn = shell.run_turn("trn_1", "echo started; sleep 30")
    collected = [await asyncio.wait_for(anext(turn), timeout=5)]
    began = time.monotonic()
    interrupt = asyncio.create_task(shell.interrupt("interrupted by request"))
    collected += [e async for e in turn]
    await asyncio.wait_for(interrupt, timeout=5)
    assert time.monotonic() - began < 1.5  # SIGTERM suffices; no wait for the SIGKILL timer
    assert collected[-1] == TurnInterrupted("interrupted by request")
    assert sum(isinstance(e, (TurnCompleted, TurnFailed, TurnInterrupted)) for e in collected) == 1


async def test_interrupt_escalates_to_sigkill(shell: ShellRuntime) -> None:
    turn = shell.run_turn("trn_1", "trap '' TERM; echo ready; sleep 30")
    assert await asyncio.wait_for(anext(turn), timeout=5) == Output(OutputStream.STDOUT, "ready\n")
    await asyncio.wait_for(shell.interrupt("stop"), timeout=10)
    assert [e async for e in turn][-1] == TurnInterrupted("stop")


async def test_background_children_do_not_hold_the_turn_open(shell: ShellRuntime) -> None:
    events = await asyncio.wait_for(run(shell, "sleep 30 & echo done"), timeout=5)
    assert events[-1] == TurnCompleted(exit_code=0)


async def test_a_process_that_left_the_group_does_not_hang_the_turn(shell: ShellRuntime) -> None:
    # setsid escapes the process-group kill; its inherited pipes must not keep the turn open.
    pid_file = shell.workspace / "orphan.pid"
    command = "setsid sh -c 'echo $$ > orphan.pid; exec sleep 30' & while [ ! -s orphan.pid ]; do :; done; echo done"
    try:
        began = time.monotonic()
        events = await asyncio.wait_for(run(shell, command), timeout=10)
        assert text_of(events, OutputStream.STDOUT) == "done\n"
        assert events[-1] == TurnCompleted(exit_code=0)
        assert time.monotonic() - began < 5
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


async def test_interrupt_when_idle_is_a_no_op(shell: ShellRuntime) -> None:
    await asyncio.wait_for(shell.interrupt("nothing runs"), timeout=1)
    assert (await run(shell, "true"))[-1] == TurnCompleted(exit_code=0)


@pytest.mark.parametrize("command", ["", "   ", "\n\t"])
async def test_empty_command_fails(shell: ShellRuntime, command: str) -> None:
    assert await run(shell, command) == [TurnFailed("empty command")]


async def test_non_utf8_output_is_replaced(shell: ShellRuntime) -> None:
    events = await run(shell, r"printf 'a\377b\n'; printf '\376' >&2")
    assert text_of(events, OutputStream.STDOUT) == "a\ufffdb\n"
    assert text_of(events, OutputStream.STDERR) == "\ufffd"
    assert events[-1] == TurnCompleted(exit_code=0)


async def test_multibyte_characters_split_across_writes_survive(shell: ShellRuntime) -> None:
    # "é" is \303\251; the two bytes arrive in separate writes (and likely separate reads).
    events = await run(shell, r"printf '\303'; sleep 0.05; printf '\251\n'")
    assert text_of(events, OutputStream.STDOUT) == "é\n"


async def test_large_output_arrives_complete(shell: ShellRuntime) -> None:
    events = await run(shell, "head -c 1000000 /dev/zero | tr '\\0' x")
    assert text_of(events, OutputStream.STDOUT) == "x" * 1_000_000


async def test_history_records_inputs_and_combined_output(shell: ShellRuntime) -> None:
    await run(shell, "echo one", "trn_1")
    await run(shell, "echo two >&2; exit 4", "trn_2")
    await run(shell, "true", "trn_3")
    assert shell.export_history() == [
        HistoryItem(HistoryRole.INPUT, "echo one", "trn_1"),
        HistoryItem(HistoryRole.OUTPUT, "one\n", "trn_1"),
        HistoryItem(HistoryRole.INPUT, "echo two >&2; exit 4", "trn_2"),
        HistoryItem(HistoryRole.OUTPUT, "two\n", "trn_2"),
        HistoryItem(HistoryRole.INPUT, "true", "trn_3"),
    ]


async def test_rehydrate_gives_the_same_history_without_rerunning(tmp_path: Path) -> None:
    first = ShellRuntime()
    await first.start("ses_a", tmp_path, [])
    await run(first, "echo ran >> log.txt; echo hello", "trn_1")
    await run(first, "echo bye", "trn_2")
    history = first.export_history()
    await first.close()

    second = ShellRuntime()
    await second.start("ses_a", tmp_path, history)
    try:
        assert second.export_history() == history
        assert (tmp_path / "sessions" / "ses_a" / "log.txt").read_text() == "ran\n"
        await run(second, "echo next", "trn_3")
        assert second.export_history() == history + [
            HistoryItem(HistoryRole.INPUT, "echo next", "trn_3"),
            HistoryItem(HistoryRole.OUTPUT, "next\n", "trn_3"),
        ]
    finally:
        await second.close()


async def test_close_kills_a_running_turn(shell: ShellRuntime) -> None:
    turn = shell.run_turn("trn_1", "echo up; sleep 30")
    await asyncio.wait_for(anext(turn), timeout=5)
    await shell.close()
    rest = await asyncio.wait_for(_drain(turn), timeout=5)
    assert isinstance(rest[-1], TurnInterrupted)


async def test_unsafe_session_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await ShellRuntime().start("../escape", tmp_path, [])


async def _drain(turn) -> list:
    return [e async for e in turn]
