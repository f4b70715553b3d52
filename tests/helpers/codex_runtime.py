"""The Codex runtime driven directly in tests: the pinned Codex CLI, a mock Responses API
(`tests.helpers.codex_mock`), settings pointing at it, and running a turn to its end.

`mock_api` (one mock per test module) and `codex` (a started runtime) are fixtures: a test
module imports them by name.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers.codex_mock import MockResponses
from tether.execution_worker._codex import CodexRuntime, CodexSettings
from tether.execution_worker.runtime import (
    HistoryAppended,
    HistoryItem,
    ItemCompleted,
    ItemKind,
    RequestOpened,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
_NATIVE = ROOT / "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
_LAUNCHER = ROOT / "node_modules/.bin/codex"


def codex_bin() -> str | None:
    """The Codex CLI pinned in package.json: the native binary (faster to start) or its launcher."""
    for path in (_NATIVE, _LAUNCHER):
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


CODEX = codex_bin()
needs_codex = pytest.mark.skipif(
    CODEX is None, reason="the Codex CLI is not installed (run `npm install`; `make test` does)"
)
TERMINAL = (TurnCompleted, TurnFailed, TurnInterrupted)


@pytest.fixture(scope="module")
def mock_api():
    with MockResponses(slow_delay_s=0.3) as mock:
        yield mock


def settings_for(mock: MockResponses, tmp_path: pathlib.Path, **overrides: Any) -> CodexSettings:
    values: dict[str, Any] = {
        "bin": CODEX,
        "model": "mock-model",
        "config": mock.codex_config(),
        # Never the real user's ~/.codex: tests must not depend on (or leak) a login.
        "home_from": tmp_path / "no-user-home",
        "request_timeout_s": 20.0,
    }
    values.update(overrides)
    return CodexSettings(**values)


@pytest.fixture
async def codex(mock_api: MockResponses, tmp_path: pathlib.Path):
    runtime = CodexRuntime(settings_for(mock_api, tmp_path))
    await runtime.start("ses_test", tmp_path, [])
    yield runtime
    await runtime.close()


Answer = Callable[[RequestOpened], dict[str, Any]]


async def run(runtime: CodexRuntime, text: str, turn_id: str = "trn_1", answer: Answer | None = None) -> list:
    """Every event of one turn; requests are answered with `answer(request)` as they open."""
    events = []
    async with asyncio.timeout(30):
        async for event in runtime.run_turn(turn_id, text):
            events.append(event)
            if isinstance(event, RequestOpened):
                assert answer is not None, f"unexpected request {event}"
                assert await runtime.respond(event.request_id, answer(event))
                assert not await runtime.respond(event.request_id, answer(event))  # only once
    assert sum(isinstance(e, TERMINAL) for e in events) == 1 and isinstance(events[-1], TERMINAL)
    return events


def of_type(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def completed_items(events: list, kind: ItemKind) -> list:
    return [e.item for e in of_type(events, ItemCompleted) if e.item.kind is kind]


def history_of(events: list) -> list[HistoryItem]:
    return [e.item for e in of_type(events, HistoryAppended)]


def accept(request: RequestOpened) -> dict[str, Any]:
    return {"decision": "accept"}


def decline(request: RequestOpened) -> dict[str, Any]:
    return {"decision": "decline"}
