"""Process logs of `tether serve` and `tether worker`: text or JSON lines, naming the work.

`configure(level, "json")` makes every record one JSON object per line on stderr with `time`
(UTC, ISO 8601), `level`, `logger`, `message`, the ids of the work it is about (`session_id`,
`turn_id`, `worker_id`, `owner`) when known, and `exception` for a traceback. The ids come from
the record's `extra=` first, else from what the running task bound with `bind()` at a seam (an
RPC handler, a worker's turn task); a task inherits its creator's bindings, as contextvars do.

Secrets never reach the output: both formats pass every line through `redact()`, which
replaces API keys (`tak_...`), worker tokens (`twt_...`), bearer credentials and pairing codes
logged as such, whatever the caller wrote. Code must still not log secrets; this is the net
under it.

Standard library only: the control plane and the worker both import it, and neither may
import the other.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["FIELDS", "FORMATS", "JsonFormatter", "TextFormatter", "bind", "bound", "configure", "redact"]

FORMATS = ("text", "json")
# The ids a line may carry, in the order they are written.
FIELDS = ("owner", "worker_id", "session_id", "turn_id")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_bound: dict[str, ContextVar[str]] = {name: ContextVar(f"tether_log_{name}", default="") for name in FIELDS}

_SECRETS = (
    # API keys and worker tokens: the prefix, then token_urlsafe(32).
    (re.compile(r"\b(tak|twt)_[A-Za-z0-9_-]{6,}"), r"\1_[redacted]"),
    # An authorization header's value, however it was quoted.
    (re.compile(r"(?i)\b(bearer)(\s+|['\"]?\s*[,:=]\s*['\"]?)[A-Za-z0-9._~+/=-]{6,}"), r"\1\2[redacted]"),
    # A pairing code named as one (XXXX-XXXX in Crockford base32).
    (re.compile(r"(?i)(pairing[ _-]?code\W{0,4})[0-9A-Z]{4}-?[0-9A-Z]{4}\b"), r"\1[redacted]"),
)


def redact(text: str) -> str:
    """`text` with every API key, worker token, bearer credential and named pairing code
    replaced by a marker."""
    for pattern, marker in _SECRETS:
        text = pattern.sub(marker, text)
    return text


def bind(**ids: str) -> None:
    """Name the work the current task does from here on (`owner`, `worker_id`, `session_id`,
    `turn_id`; an empty value clears the name). Tasks created afterwards inherit it."""
    for name, value in ids.items():
        var = _bound.get(name)
        if var is None:
            raise TypeError(f"bind() names {', '.join(FIELDS)}; got {name!r}")
        var.set(value)


def bound() -> dict[str, str]:
    """The ids the current task has bound (only those set)."""
    return {name: value for name, var in _bound.items() if (value := var.get())}


def _ids(record: logging.LogRecord) -> dict[str, str]:
    ids = {}
    for name in FIELDS:
        value = getattr(record, name, None) or _bound[name].get()
        if value:
            ids[name] = str(value)
    return ids


class JsonFormatter(logging.Formatter):
    """One JSON object per record, secrets redacted (see the module doc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(_ids(record))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The human format (time, level, logger, message, then the ids as key=value), redacted."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = _ids(record)
        if ids:
            head, sep, rest = line.partition("\n")  # ids go on the first line, before a traceback
            line = head + " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" + sep + rest
        return redact(line)


def configure(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log at `level` in `fmt` ("text" or "json") to `stream` (stderr), as `logging.basicConfig`
    does: a process whose root logger has handlers already (an embedding program, a test
    runner) keeps them. With JSON, warnings are logged too, so every line stays JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"the log format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if fmt == "json" and handler in logging.getLogger().handlers:
        logging.captureWarnings(True)
