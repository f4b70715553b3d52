"""The Codex runtime against a stand-in for `codex app-server`, for what the real one cannot be
made to do on cue: a server request tether does not support, a resume answered without a
thread id, a server that never answers, a turn's end spaced out in time."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
from typing import Any

import pytest

from tests.helpers.codex_runtime import run
from tether.execution_worker import _codex
from tether.execution_worker._codex import CodexError, CodexRuntime, CodexSettings
from tether.execution_worker.runtime import HistoryAppended, HistoryItem, HistoryRole, RawEvent, TurnCompleted

# A stand-in for `codex app-server`, for what the real one cannot be made to do on cue.
FAKE_APP_SERVER = """\
import json, sys, time

def send(message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()

def status(kind):
    send({"method": "thread/status/changed", "params": {"threadId": "thr_fake", "status": {"type": kind}}})

def write_rollout(text):
    lines = [
        {"type": "turn_context", "payload": {"turn_id": "turn_fake"}},
        {"type": "event_msg", "payload": {"type": "task_started", "turn_id": "turn_fake"}},
        {"type": "response_item", "payload": {"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": text}]}},
        {"type": "response_item", "payload": {"type": "message", "role": "assistant",
                                              "content": [{"type": "output_text", "text": "hello"}]}},
        {"type": "event_msg", "payload": {"type": "task_complete", "turn_id": "turn_fake"}},
    ]
    with open(ROLLOUT, "a") as rollout:
        rollout.write("".join(json.dumps(line) + "\\n" for line in lines))

COMPLETED = {"method": "turn/completed",
             "params": {"threadId": "thr_fake", "turn": {"id": "turn_fake", "status": "completed"}}}

for line in sys.stdin:
    message = json.loads(line)
    with open(LOG, "a") as log:
        log.write(line)
    method, rid = message.get("method"), message.get("id")
    if MODE == "silent":
        continue
    if method == "initialize":
        send({"id": rid, "result": {"userAgent": "tether/9.9.9 (fake)"}})
    elif method in ("thread/start", "thread/resume"):
        path = ROLLOUT if MODE.startswith("ending") else None
        thread = {} if MODE == "no-thread-id" else {"id": "thr_fake", "path": path}
        send({"id": rid, "result": {"thread": thread, "model": "fake-model"}})
    elif method == "turn/start" and MODE.startswith("ending"):
        # A turn's end as Codex sends it: the thread goes idle, then turn/completed; the
        # rollout file has the turn's lines before (or, "ending-late", only after) both.
        text = message["params"]["input"][0]["text"]
        send({"id": rid, "result": {"turn": {"id": "turn_fake", "status": "inProgress"}}})
        status("active")
        if MODE != "ending-late":
            write_rollout(text)
        status("idle")
        if MODE == "ending-slow":
            time.sleep(0.3)
        send(COMPLETED)
        if MODE == "ending-late":
            time.sleep(0.1)
            write_rollout(text)
    elif method == "turn/start":
        send({"id": rid, "result": {"turn": {"id": "turn_fake", "status": "inProgress"}}})
        send({"id": 0, "method": "item/tool/call",
              "params": {"threadId": "thr_fake", "turnId": "turn_fake", "tool": "lookup"}})
    elif method is None and rid == 0:
        send(COMPLETED)
"""


def fake_codex(tmp_path: pathlib.Path, mode: str, **overrides: Any) -> tuple[CodexSettings, pathlib.Path]:
    """Settings running the fake app-server in `mode`, and the file it logs what it got to."""
    script = tmp_path / "fake-codex"
    log = tmp_path / f"fake-codex-{mode}.log"
    rollout = tmp_path / f"rollout-{mode}.jsonl"
    script.write_text(
        f"#!{sys.executable}\nMODE, LOG, ROLLOUT = {mode!r}, {str(log)!r}, {str(rollout)!r}\n{FAKE_APP_SERVER}"
    )
    script.chmod(0o755)
    values: dict[str, Any] = {"bin": str(script), "home_from": tmp_path / "no-user-home", **overrides}
    return CodexSettings(**values), log


async def test_unsupported_server_requests_get_an_error_answer(tmp_path: pathlib.Path) -> None:
    settings, log = fake_codex(tmp_path, "tool-call")
    runtime = CodexRuntime(settings)
    try:
        await runtime.start("ses_fake", tmp_path, [])
        assert runtime.runtime_metadata()["codex_version"] == "9.9.9"
        events = await run(runtime, "call a tool")
    finally:
        await runtime.close()
    [raw] = [e for e in events if getattr(e, "name", "") == "item/tool/call"]
    assert json.loads(raw.json) == {
        "unsupported_server_request": True,
        "params": {"threadId": "thr_fake", "turnId": "turn_fake", "tool": "lookup"},
    }
    assert events[-1] == TurnCompleted()
    received = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"id": 0, "error": {"code": -32601, "message": "tether does not support item/tool/call"}} in received
    assert received[0]["params"]["capabilities"] == {"experimentalApi": True}
    assert received[1] == {"method": "initialized"}


async def test_a_resume_without_a_thread_id_fails_closed(tmp_path: pathlib.Path) -> None:
    settings, log = fake_codex(tmp_path, "no-thread-id")
    runtime = CodexRuntime(settings)
    with pytest.raises(CodexError, match="thread/resume returned no thread id"):
        await runtime.start("ses_fake", tmp_path, [HistoryItem(HistoryRole.INPUT, "earlier", "trn_0")])
    assert runtime.pid is None and runtime.runtime_thread_id == ""
    resume = [json.loads(line) for line in log.read_text().splitlines()][-1]
    assert resume["method"] == "thread/resume"
    assert resume["params"]["history"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "earlier"}]}
    ]
    await runtime.close()


async def test_every_request_has_a_deadline(tmp_path: pathlib.Path) -> None:
    settings, _ = fake_codex(tmp_path, "silent", request_timeout_s=0.5)
    runtime = CodexRuntime(settings)
    with pytest.raises(CodexError, match="initialize got no answer within 0.5s"):
        await asyncio.wait_for(runtime.start("ses_fake", tmp_path, []), timeout=10)
    assert runtime.pid is None


def _idle(event: object) -> bool:
    return isinstance(event, RawEvent) and event.name == "thread/status/changed" and '"idle"' in event.json


@pytest.mark.parametrize("mode", ["ending", "ending-late"])
async def test_the_turn_s_end_travels_together(tmp_path: pathlib.Path, mode: str) -> None:
    """The thread going idle is held for turn/completed, so it leaves with the history and the
    terminal event; the history is whole whether the rollout file had the turn's end before
    turn/completed came or only after it."""
    settings, _ = fake_codex(tmp_path, mode)
    runtime = CodexRuntime(settings)
    try:
        await runtime.start("ses_fake", tmp_path, [])
        for turn_id in ("trn_1", "trn_2"):
            events = await run(runtime, f"hi {turn_id}", turn_id)
            names = [getattr(e, "name", type(e).__name__) for e in events]
            assert names == [
                "thread/status/changed",
                "thread/status/changed",
                "HistoryAppended",
                "HistoryAppended",
                "TurnCompleted",
            ]
            assert _idle(events[1]) and not _idle(events[0])
            history = [e.item for e in events if isinstance(e, HistoryAppended)]
            assert [(h.role, h.text, h.turn_id) for h in history] == [
                (HistoryRole.INPUT, f"hi {turn_id}", turn_id),
                (HistoryRole.OUTPUT, "hello", turn_id),
            ]
        assert [h.text for h in runtime.export_history()] == ["hi trn_1", "hello", "hi trn_2", "hello"]
    finally:
        await runtime.close()


async def _timed_turn(runtime: CodexRuntime) -> list[tuple[float, object]]:
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, object]] = []
    async with asyncio.timeout(30):
        async for event in runtime.run_turn("trn_1", "hi"):
            seen.append((loop.time(), event))
    assert seen[-1][1] == TurnCompleted()
    return seen


@pytest.mark.parametrize("hold_s", [30.0, 0.05])
async def test_the_idle_status_waits_for_turn_completed_within_a_bound(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, hold_s: float
) -> None:
    """The fake sends turn/completed 0.3 s after the idle status: held long enough, the idle
    status is yielded with the terminal event (no wait between them); held briefly (the default),
    it goes out on its own meanwhile."""
    monkeypatch.setattr(_codex, "END_HOLD_S", hold_s)
    settings, _ = fake_codex(tmp_path, "ending-slow")
    runtime = CodexRuntime(settings)
    try:
        await runtime.start("ses_fake", tmp_path, [])
        seen = await _timed_turn(runtime)
    finally:
        await runtime.close()
    [(active_at, _), (idle_at, idle)] = [(t, e) for t, e in seen if isinstance(e, RawEvent)]
    assert _idle(idle)
    end_at = seen[-1][0]
    if hold_s > 1:
        assert idle_at - active_at >= 0.25 and end_at - idle_at < 0.1
    else:
        assert end_at - idle_at >= 0.2
