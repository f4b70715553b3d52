"""Request field checks. Each failure names the field; nothing is written before they pass."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from jsonschema import validators
from jsonschema.exceptions import SchemaError

from ..domain.errors import InvalidArgument
from ..domain.model import TITLE_MAX

MAX_ID = 128
MAX_INPUT_BYTES = 1 << 20
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256


def required(field: str, value: str, *, max_len: int = MAX_ID) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > max_len:
        raise InvalidArgument(field, f"must be at most {max_len} characters (got {len(value)})")
    return value


def optional(field: str, value: str, *, max_len: int = MAX_ID) -> str:
    if len(value) > max_len:
        raise InvalidArgument(field, f"must be at most {max_len} characters (got {len(value)})")
    return value


def word(field: str, value: str, *, max_len: int = MAX_ID) -> str:
    """An identifier: letters, digits, '.', '_' and '-'."""
    required(field, value, max_len=max_len)
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in value):
        raise InvalidArgument(field, f"must use only letters, digits, '.', '_' and '-' (got {value!r})")
    return value


def labels(field: str, value: Mapping[str, str]) -> dict[str, str]:
    if len(value) > MAX_LABELS:
        raise InvalidArgument(field, f"at most {MAX_LABELS} entries (got {len(value)})")
    for k, v in value.items():
        # The key names the field in the error; cut, so a huge key cannot make a huge status.
        name = f"{field}[{k if len(k) <= MAX_LABEL_KEY else k[:MAX_LABEL_KEY] + '...'!r}]"
        word(name, k, max_len=MAX_LABEL_KEY)
        if len(v) > MAX_LABEL_VALUE:
            raise InvalidArgument(name, f"value must be at most {MAX_LABEL_VALUE} characters")
    return dict(value)


def title(field: str, value: str) -> str:
    """A session title: at most TITLE_MAX characters on one line ("" clears it)."""
    optional(field, value, max_len=TITLE_MAX)
    if any(not c.isprintable() for c in value):
        raise InvalidArgument(field, "must be one line of printable characters (no newlines or control characters)")
    return value


def output_schema(field: str, value: str, *, max_bytes: int = 64 * 1024) -> str:
    """An optional JSON Schema: a JSON object that is a valid schema of its own `$schema`
    dialect (Draft 2020-12 when it names none), checked with the `jsonschema` library."""
    if not value:
        return ""
    schema = json_object(field, value, max_bytes=max_bytes)
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = exc.json_path if exc.path else "$"
        raise InvalidArgument(field, f"is not a valid JSON Schema: at {where}: {exc.message}") from None
    return value


def enum_value(field: str, value: int, enum_type) -> int:
    if value not in _known_values(enum_type):
        names = ", ".join(n for n in enum_type.keys())
        raise InvalidArgument(field, f"unknown value {value}; expected one of {names}")
    return value


@functools.cache
def _known_values(enum_type) -> frozenset[int]:
    """An enum's numbers, once per enum: protobuf's `values()` builds a new list on each call,
    and every event a worker sends names a few enums (about 1 % of the control plane's time
    under the turn load, by py-spy)."""
    return frozenset(enum_type.values())


def text(field: str, value: str, *, max_bytes: int = MAX_INPUT_BYTES) -> str:
    if not value.strip():
        raise InvalidArgument(field, "must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(field, f"must be at most {max_bytes} bytes (got {size})")
    return value


def in_range(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high} (got {value})")
    return value


def json_object(field: str, value: str, *, max_bytes: int = 64 * 1024) -> dict[str, Any]:
    """A required JSON object (an answer to a pending request)."""
    text(field, value, max_bytes=max_bytes)
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise InvalidArgument(field, f"is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument(field, f"must be a JSON object, got {type(parsed).__name__}")
    return parsed
