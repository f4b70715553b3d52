"""The script runtime: a trivial, deterministic runtime whose turn input is a small script.

It exists so that the worker conformance kit (docs/conformance.md) can make a turn do exactly
what a scenario needs in any worker, whatever its language: speak, wait, fail, recall the
rehydrated history, ask for an approval. Every conformant worker implements the same few
commands, one per line:

    say TEXT         output TEXT and a newline on stdout
    sleep MS         wait MS milliseconds (an interrupt ends the wait at once)
    fail MESSAGE     end the turn as failed; later lines do not run
    exit CODE        end the turn as completed with exit code CODE; later lines do not run
    recall           output "recalled: <text>" for each INPUT item of the history so far
    approve SUMMARY  open a command approval, wait for it, output "decision: <decision>"

Its model-visible history is the one the worker rebuilds from the log: per turn an INPUT item
with the input and, when the turn printed anything, an OUTPUT item with all of it joined.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tether.execution_worker.runtime import (
    HistoryItem,
    HistoryRole,
    Output,
    OutputStream,
    RequestKind,
    RequestOpened,
    Runtime,
    RuntimeEvent,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    new_request_id,
    session_workspace,
)

#: The decisions an `approve` line offers.
APPROVE_DECISIONS = ("accept", "decline")


class _Interrupted(Exception):
    pass


class ScriptRuntime(Runtime):
    """Runs each turn's input as a script of `say`/`sleep`/`fail`/`exit`/`recall`/`approve`."""

    def __init__(self) -> None:
        self._history: list[HistoryItem] = []
        self._started = False
        self._closed = False
        self._running = False
        self._stop: asyncio.Event | None = None
        self._stop_reason = ""
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        # The workspace is made like any runtime's, though a script never touches it.
        session_workspace(Path(workdir), session_id).mkdir(parents=True, exist_ok=True)
        self._history = list(history)
        self._started = True

    async def run_turn(self, turn_id: str, input: str) -> AsyncIterator[RuntimeEvent]:
        if not self._started or self._closed:
            yield TurnFailed("script runtime is not started")
            return
        if self._running:
            yield TurnFailed("another turn is already running in this session")
            return
        earlier_inputs = [item.text for item in self._history if item.role is HistoryRole.INPUT]
        self._history.append(HistoryItem(HistoryRole.INPUT, input, turn_id))
        self._running = True
        self._stop = asyncio.Event()
        output: list[str] = []
        try:
            async for event in self._run(input, earlier_inputs):
                if isinstance(event, Output):
                    output.append(event.text)
                yield event
        finally:
            self._running = False
            self._stop = None
            if output:
                self._history.append(HistoryItem(HistoryRole.OUTPUT, "".join(output), turn_id))

    async def _run(self, script: str, earlier_inputs: list[str]) -> AsyncIterator[RuntimeEvent]:
        for number, line in enumerate(script.splitlines(), start=1):
            if not line.strip():
                continue
            command, _, arg = line.strip().partition(" ")
            try:
                if self._stop is not None and self._stop.is_set():
                    raise _Interrupted
                if command == "say":
                    yield Output(OutputStream.STDOUT, arg + "\n")
                elif command == "sleep":
                    await self._sleep(_number(arg, line, number) / 1000)
                elif command == "fail":
                    yield TurnFailed(arg)
                    return
                elif command == "exit":
                    yield TurnCompleted(exit_code=int(_number(arg, line, number)))
                    return
                elif command == "recall":
                    for text in earlier_inputs:
                        yield Output(OutputStream.STDOUT, f"recalled: {text}\n")
                elif command == "approve":
                    request_id = new_request_id()
                    answer = self._waiting[request_id] = asyncio.get_running_loop().create_future()
                    yield RequestOpened(
                        request_id=request_id,
                        kind=RequestKind.COMMAND_APPROVAL,
                        method="script/approve",
                        params_json=json.dumps({"summary": arg}),
                        summary=arg,
                        available_decisions=APPROVE_DECISIONS,
                    )
                    try:
                        decision = (await self._until_stopped(answer)).get("decision")
                    finally:
                        self._waiting.pop(request_id, None)
                    if isinstance(decision, dict):  # {"acceptWithExecpolicyAmendment": {...}}
                        decision = next(iter(decision), "")
                    yield Output(OutputStream.STDOUT, f"decision: {decision}\n")
                else:
                    yield TurnFailed(f"line {number}: unknown script command {command!r} in {line.strip()!r}")
                    return
            except _Interrupted:
                yield TurnInterrupted(self._stop_reason)
                return
            except ValueError as exc:
                yield TurnFailed(str(exc))
                return
        yield TurnCompleted(exit_code=0)

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            return
        raise _Interrupted

    async def _until_stopped(self, answer: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        assert self._stop is not None
        stopped = asyncio.ensure_future(self._stop.wait())
        waiters: set[asyncio.Future[Any]] = {answer, stopped}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not answer.done():
            raise _Interrupted
        return answer.result()

    async def interrupt(self, reason: str) -> None:
        if self._stop is not None and not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def respond(self, request_id: str, answer: dict[str, Any]) -> bool:
        waiting = self._waiting.get(request_id)
        if waiting is None or waiting.done():
            return False
        waiting.set_result(answer)
        return True

    def export_history(self) -> list[HistoryItem]:
        return list(self._history)

    def runtime_metadata(self) -> dict[str, Any]:
        return {"runtime": "script"}

    async def close(self) -> None:
        self._closed = True
        await self.interrupt("runtime closed")


def _number(arg: str, line: str, number: int) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"line {number}: {line.strip()!r} needs a number") from None
    if value < 0:
        raise ValueError(f"line {number}: {line.strip()!r} needs a number of at least 0")
    return value
