"""What only a stand-in `claude` can be made to do: ignore the interrupt control request (the
runtime then stops it with a signal, and the next turn resumes the conversation in a new
process), finish a turn its consumer abandoned after the next one was sent (what is left of it
stays out of the next turn), and die in the middle of a turn (the turn fails with the process's
last words)."""

from __future__ import annotations

import asyncio
import pathlib
import sys

import pytest

from tether.execution_worker import _claude
from tether.execution_worker._claude import ClaudeRuntime
from tether.execution_worker._claude_settings import ClaudeSettings
from tether.execution_worker.runtime import ItemCompleted, ItemKind, TurnCompleted, TurnFailed, TurnInterrupted

# Speaks just enough stream-json: answers initialize, ignores interrupt, answers a user message
# with an assistant message and a result, except "hang" (never answered), "slow" (answered a
# second later) and "crash" (exits).
FAKE = r"""
import json, sys, time
resumed = "--resume" in sys.argv
def say(obj):
    print(json.dumps(obj), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "control_request" and msg["request"]["subtype"] == "initialize":
        say({"type": "control_response", "response": {"subtype": "success", "request_id": msg["request_id"], "response": {}}})
    elif msg["type"] == "user":
        text = msg["message"]["content"][0]["text"]
        if text == "hang":
            continue
        if text == "slow":
            time.sleep(1.0)
        if text == "crash":
            print("fake claude: out of cheese", file=sys.stderr, flush=True)
            sys.exit(3)
        reply = ("resumed: " if resumed else "") + text
        say({"type": "assistant", "message": {"id": "m", "role": "assistant", "content": [{"type": "text", "text": reply}]}})
        say({"type": "result", "subtype": "success", "is_error": False, "result": reply, "usage": {}})
"""


@pytest.fixture
async def fake(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    script = tmp_path / "fake_claude.py"
    script.write_text(FAKE)
    launcher = tmp_path / "claude"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setattr(_claude, "INTERRUPT_GRACE_S", 0.5)
    runtime = ClaudeRuntime(ClaudeSettings(bin=str(launcher), config_from=tmp_path / "none", request_timeout_s=10))
    await runtime.start("ses_fake", tmp_path, [])
    yield runtime
    await runtime.close()


async def turn(runtime: ClaudeRuntime, text: str, turn_id: str) -> list:
    async with asyncio.timeout(20):
        return [event async for event in runtime.run_turn(turn_id, text)]


async def test_an_unanswered_interrupt_stops_claude_and_the_next_turn_resumes(fake: ClaudeRuntime) -> None:
    events: list = []

    async def consume() -> None:
        async for event in fake.run_turn("trn_1", "hang"):
            events.append(event)

    task = asyncio.create_task(consume())
    first_pid = fake.pid
    await asyncio.sleep(0.2)  # the message is with claude, which never answers it
    await fake.interrupt("stop it")
    await asyncio.wait_for(task, 10)
    assert events[-1] == TurnInterrupted("stop it")
    after = await turn(fake, "hello", "trn_2")
    assert after[-1] == TurnCompleted()
    [message] = [e.item for e in after if isinstance(e, ItemCompleted) and e.item.kind is ItemKind.AGENT_MESSAGE]
    assert message.text == "resumed: hello"  # a new process, started with --resume
    assert fake.pid is not None and fake.pid != first_pid


async def test_claude_dying_mid_turn_fails_it_with_its_last_words(fake: ClaudeRuntime) -> None:
    events = await turn(fake, "crash", "trn_1")
    assert isinstance(events[-1], TurnFailed)
    assert "claude exited (code 3)" in events[-1].error_message and "out of cheese" in events[-1].error_message


async def test_what_is_left_of_an_abandoned_turn_stays_out_of_the_next(fake: ClaudeRuntime) -> None:
    async def consume() -> None:
        async for _ in fake.run_turn("trn_1", "slow"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)  # "slow" is with claude, which answers it in a second
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    events = await turn(fake, "next", "trn_2")
    assert events[-1] == TurnCompleted()
    texts = [e.item.text for e in events if isinstance(e, ItemCompleted) and e.item.kind is ItemKind.AGENT_MESSAGE]
    assert texts == ["next"]  # not "slow", which came first
