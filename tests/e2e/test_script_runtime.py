"""The script runtime (the conformance kit's runtime) on its own, and one approval through a
real worker and control plane."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers.processes import eventually, start_worker
from tether import sdk
from tether.execution_worker import (
    HistoryItem,
    HistoryRole,
    Output,
    OutputStream,
    ScriptRuntime,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)
from tether.execution_worker.runtime import RequestKind, RequestOpened


@pytest.fixture
async def script(tmp_path: Path):
    runtime = ScriptRuntime()
    await runtime.start("ses_test", tmp_path, [])
    yield runtime
    await runtime.close()


async def run(runtime: ScriptRuntime, script_text: str, turn_id: str = "trn_1") -> list:
    return [event async for event in runtime.run_turn(turn_id, script_text)]


def stdout(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, Output) and e.stream is OutputStream.STDOUT)


async def test_say_sleep_and_complete(script: ScriptRuntime) -> None:
    events = await run(script, "say one\n\nsleep 10\nsay two words")
    assert stdout(events) == "one\ntwo words\n"
    assert events[-1] == TurnCompleted(exit_code=0)


async def test_fail_and_exit_stop_the_script(script: ScriptRuntime) -> None:
    events = await run(script, "say a\nfail it broke\nsay never")
    assert stdout(events) == "a\n"
    assert events[-1] == TurnFailed("it broke")
    events = await run(script, "exit 3\nsay never", "trn_2")
    assert events == [TurnCompleted(exit_code=3)]


async def test_bad_lines_fail_the_turn_naming_the_line(script: ScriptRuntime) -> None:
    events = await run(script, "say ok\ndance now")
    assert isinstance(events[-1], TurnFailed)
    assert "line 2" in events[-1].error_message and "dance" in events[-1].error_message
    events = await run(script, "sleep soon", "trn_2")
    assert isinstance(events[-1], TurnFailed) and "needs a number" in events[-1].error_message


async def test_interrupt_ends_a_sleep_at_once(script: ScriptRuntime) -> None:
    turn = script.run_turn("trn_1", "say start\nsleep 30000\nsay never")
    assert await anext(turn) == Output(OutputStream.STDOUT, "start\n")
    pending = asyncio.ensure_future(anext(turn))
    await asyncio.sleep(0.05)
    await script.interrupt("enough")
    assert await asyncio.wait_for(pending, 2) == TurnInterrupted("enough")
    assert [e async for e in turn] == []


async def test_history_and_recall_after_rehydration(tmp_path: Path) -> None:
    runtime = ScriptRuntime()
    await runtime.start("ses_a", tmp_path, [])
    await run(runtime, "say apple", "trn_1")
    await run(runtime, "sleep 1", "trn_2")
    history = runtime.export_history()
    assert history == [
        HistoryItem(HistoryRole.INPUT, "say apple", "trn_1"),
        HistoryItem(HistoryRole.OUTPUT, "apple\n", "trn_1"),
        HistoryItem(HistoryRole.INPUT, "sleep 1", "trn_2"),
    ]
    elsewhere = ScriptRuntime()
    await elsewhere.start("ses_a", tmp_path / "b", history)
    events = await run(elsewhere, "recall", "trn_3")
    assert stdout(events) == "recalled: say apple\nrecalled: sleep 1\n"


async def test_approve_waits_for_the_answer(script: ScriptRuntime) -> None:
    turn = script.run_turn("trn_1", "approve rm -rf build\nsay after")
    opened = await anext(turn)
    assert isinstance(opened, RequestOpened)
    assert opened.kind is RequestKind.COMMAND_APPROVAL and opened.summary == "rm -rf build"
    assert opened.available_decisions == ("accept", "decline")
    pending = asyncio.ensure_future(anext(turn))
    await asyncio.sleep(0.05)
    assert not pending.done()
    assert await script.respond("req_unknown", {"decision": "accept"}) is False
    assert await script.respond(opened.request_id, {"decision": "decline"}) is True
    assert await asyncio.wait_for(pending, 2) == Output(OutputStream.STDOUT, "decision: decline\n")
    assert stdout([e async for e in turn]) == "after\n"


async def test_approval_through_a_real_worker(cp_process, procs, tmp_path: Path) -> None:
    # The control plane runs as a process: the procs fixture stops the worker synchronously,
    # and a draining worker needs a control plane that answers.
    start_worker(procs, cp_process.target, tmp_path / "w", "worker", 1, "--runtime", "script")
    async with sdk.AsyncClient(cp_process.target) as client:
        await _approve_one(client)


async def _approve_one(client: sdk.AsyncClient) -> None:
    session = await client.create_session(runtime="script")
    turn = await client.send_input(session.session_id, "say before\napprove deploy\nsay after")

    async def opened():
        return await client.list_requests(session.session_id)

    await eventually(opened, what="the approval to be opened")
    (request,) = await opened()
    await client.respond_to_request(session.session_id, request.request_id, decision="accept")
    done = await client.wait_for_turn(session.session_id, turn.turn_id, timeout_s=10)
    assert done.state == sdk.TurnState.COMPLETED
    events = [e async for e in client.stream_events(session.session_id, stop_at_end=True)]
    text = "".join(e.text for e in events if e.kind is sdk.EventKind.OUTPUT)
    assert text == "before\ndecision: accept\nafter\n"
