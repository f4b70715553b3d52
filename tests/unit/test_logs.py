"""tether.logs: the JSON and text formats, the ids a line carries (bound by the task, or given
with `extra=`), and the redaction under every line."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import warnings

import pytest

from tether import logs

KEY = "tak_" + "A1b2_C3-d4" * 4
TOKEN = "twt_" + "Zz9-yY8_" * 5


def _record(msg: str, *args: object, exc: BaseException | None = None, **extra: str) -> logging.LogRecord:
    record = logging.LogRecord("tether.test", logging.WARNING, __file__, 1, msg, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def _in_fresh_context(fn):
    return contextvars.copy_context().run(fn)


def test_a_json_line_carries_the_bound_ids_and_extra_overrides_them() -> None:
    def run() -> dict:
        logs.bind(owner="alice", session_id="ses_1", turn_id="trn_1")
        return json.loads(logs.JsonFormatter().format(_record("turn %s ended", "trn_2", turn_id="trn_2")))

    entry = _in_fresh_context(run)
    assert entry["message"] == "turn trn_2 ended" and entry["level"] == "WARNING" and entry["logger"] == "tether.test"
    assert (entry["owner"], entry["session_id"], entry["turn_id"]) == ("alice", "ses_1", "trn_2")
    assert "worker_id" not in entry
    assert entry["time"].endswith("+00:00")


def test_an_empty_value_clears_a_bound_id_and_unknown_names_are_refused() -> None:
    def run() -> tuple[dict[str, str], dict[str, str]]:
        logs.bind(session_id="ses_1", worker_id="wrk_1")
        before = logs.bound()
        logs.bind(session_id="")
        return before, logs.bound()

    before, after = _in_fresh_context(run)
    assert before == {"worker_id": "wrk_1", "session_id": "ses_1"} and after == {"worker_id": "wrk_1"}
    with pytest.raises(TypeError, match="session"):
        logs.bind(session="ses_1")


async def test_a_task_inherits_the_ids_its_creator_bound_and_binds_its_own_apart() -> None:
    async def child() -> dict[str, str]:
        inherited = logs.bound()
        logs.bind(turn_id="trn_child")
        return inherited

    def run() -> asyncio.Task[dict[str, str]]:
        logs.bind(owner="alice")
        return asyncio.get_running_loop().create_task(child())

    inherited = await _in_fresh_context(run)
    assert inherited == {"owner": "alice"}
    assert "turn_id" not in logs.bound()


@pytest.mark.parametrize(
    "logged",
    [
        f"key {KEY} refused",
        f"token={TOKEN}",
        f"('authorization', 'Bearer {KEY}')",
        "authorization: bearer sk-live-0123456789abcdef",
        "pairing code ABCD-EF12 used",
        "pairing_code=ABCDEF12",
    ],
)
def test_secrets_are_redacted_in_both_formats(logged: str) -> None:
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        line = formatter.format(_record("%s", logged))
        assert "[redacted]" in line
        for secret in (KEY, TOKEN, "sk-live-0123456789abcdef", "ABCD-EF12", "ABCDEF12"):
            assert secret not in line


def test_a_traceback_is_redacted_and_stays_one_json_line() -> None:
    try:
        raise ValueError(f"bad credential {TOKEN}")
    except ValueError as exc:
        line = logs.JsonFormatter().format(_record("failed", exc=exc))
    assert "\n" not in line
    entry = json.loads(line)
    assert "ValueError: bad credential twt_[redacted]" in entry["exception"] and TOKEN not in line


def test_ids_that_look_like_words_are_not_redacted() -> None:
    text = "worker wrk_01m953 took session ses_01M953 (token wtk_01M953, key kid_01M9); bearer of news"
    assert logs.redact(text) == text


def test_the_text_format_puts_the_ids_on_the_first_line() -> None:
    def run() -> str:
        logs.bind(worker_id="wrk_1")
        return logs.TextFormatter().format(_record("attached", session_id="ses_1"))

    line = _in_fresh_context(run)
    assert line.endswith("tether.test: attached [worker_id=wrk_1 session_id=ses_1]")


def test_configure_refuses_an_unknown_format_and_keeps_handlers_already_there() -> None:
    with pytest.raises(ValueError, match="text, json"):
        logs.configure("INFO", "yaml")
    root = logging.getLogger()
    handlers = list(root.handlers)
    stream = io.StringIO()
    logs.configure("INFO", "json", stream)  # pytest's handlers are there: nothing is added
    assert root.handlers == handlers
    assert warnings.showwarning.__module__ != "logging"  # warnings were left alone too
