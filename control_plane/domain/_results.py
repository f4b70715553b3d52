"""Typed results: a turn's final message checked against the JSON Schema it was given.

The schema was checked when the input came (api/'s `_validate.output_schema`); here the turn's
final agent message must parse as JSON and validate, with the maintained `jsonschema` library
(the schema's own `$schema` dialect, else Draft 2020-12). Validators are compiled once per
schema text and kept for a while, since a session sends the same schema turn after turn.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import validators

_ERRORS_SHOWN = 5


@functools.lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    schema = json.loads(schema_text)
    return validators.validator_for(schema)(schema)


def check_result(schema_text: str, final_message: str) -> tuple[str, str]:
    """(the result as compact JSON, "") when `final_message` matches the schema, else ("", a
    message saying why, naming up to five places that do not match)."""
    if not final_message.strip():
        return "", "the turn produced no final message to check against its output schema"
    try:
        result = json.loads(final_message)
    except ValueError as exc:
        return "", f"the turn's final message is not JSON ({exc}), so it cannot match its output schema"
    found = sorted(_validator(schema_text).iter_errors(result), key=lambda e: list(e.absolute_path))
    if found:
        shown = "; ".join(f"at {e.json_path}: {e.message}" for e in found[:_ERRORS_SHOWN])
        more = f" (and {len(found) - _ERRORS_SHOWN} more)" if len(found) > _ERRORS_SHOWN else ""
        return "", f"the turn's result does not match its output schema: {shown}{more}"
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False), ""
