"""Page tokens (AIP-158): opaque to callers, bound to the query they continue.

A token is URL-safe base64 of a small JSON object: the format version, a fingerprint of the
query's parameters (everything but the page size) and the sort key of the last item returned.
A token from another query, or one that was changed, is INVALID_PAGE_TOKEN naming `page_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from ..domain import errors

_VERSION = 2


def _fingerprint(query: dict[str, Any]) -> str:
    canonical = json.dumps(query, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _refuse(description: str) -> errors.InvalidPageToken:
    return errors.InvalidPageToken(description)


def encode(query: dict[str, Any], key: list[Any]) -> str:
    """The token that continues `query` after the item whose sort key is `key`."""
    data = {"v": _VERSION, "q": _fingerprint(query), "k": key}
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def decode(token: str, query: dict[str, Any], shape: tuple[type, ...]) -> list[Any]:
    """The sort key `token` continues after; it must come from the same query and hold values
    of the types in `shape`."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise _refuse("is malformed; pass next_page_token unchanged") from None
    if not isinstance(data, dict) or data.get("v") != _VERSION:
        raise _refuse("is malformed or from another version; start again without it")
    if data.get("q") != _fingerprint(query):
        raise _refuse("belongs to a different query (the filters or order changed); start again without it")
    key = data.get("k")
    if (
        not isinstance(key, list)
        or len(key) != len(shape)
        or not all(type(v) is t for v, t in zip(key, shape, strict=False))  # bool is no int here
    ):
        raise _refuse("is malformed; pass next_page_token unchanged")
    return key
