"""The Codex runtime against a stand-in for `codex app-server`, for what the real one cannot be
made to do on cue: a server request tether does not support, a resume answered without a
thread id, a server that never answers."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
from typing import Any

import pytest

from tests.helpers.codex_runtime import run
from tether.execution_worker._codex import CodexError, CodexRuntime, CodexSettings
from tether.execution_worker.runtime import HistoryItem, HistoryRole, TurnCompleted

# A stand-in for `codex app-server`, for what the real one cannot be made to do on cue.
FAKE_APP_SERVER = """\
import json, sys

def send(message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()

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
        thread = {} if MODE == "no-thread-id" else {"id": "thr_fake", "path": None}
        send({"id": rid, "result": {"thread": thread, "model": "fake-model"}})
    elif method == "turn/start":
        send({"id": rid, "result": {"turn": {"id": "turn_fake", "status": "inProgress"}}})
        send({"id": 0, "method": "item/tool/call",
              "params": {"threadId": "thr_fake", "turnId": "turn_fake", "tool": "lookup"}})
    elif method is None and rid == 0:
        send({"method": "turn/completed",
              "params": {"threadId": "thr_fake", "turn": {"id": "turn_fake", "status": "completed"}}})
"""


def fake_codex(tmp_path: pathlib.Path, mode: str, **overrides: Any) -> tuple[CodexSettings, pathlib.Path]:
    """Settings running the fake app-server in `mode`, and the file it logs what it got to."""
    script = tmp_path / "fake-codex"
    log = tmp_path / f"fake-codex-{mode}.log"
    script.write_text(f"#!{sys.executable}\nMODE, LOG = {mode!r}, {str(log)!r}\n{FAKE_APP_SERVER}")
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
