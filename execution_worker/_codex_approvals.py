"""Codex's server requests (command and file-change approvals, questions for the user) as the
runtime's pending requests.

A request Codex sends during a turn becomes a `RequestOpened` with a fresh request id; the
application's answer comes back through `Runtime.respond` and goes to Codex as the JSON-RPC
result of that server request. A request is forgotten once answered, once Codex says it was
resolved otherwise, or when its turn ends: nothing outlives the turn it belongs to.
"""

from __future__ import annotations

import json
from typing import Any

from tether.execution_worker._codex_events import CodexTurn
from tether.execution_worker.runtime import RequestKind, RequestOpened, new_request_id

_DEFAULT_DECISIONS = ("accept", "acceptForSession", "decline", "cancel")


class Approvals:
    """The server requests waiting for an answer: request id -> (JSON-RPC id, turn)."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[int | str, CodexTurn]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self, turn: CodexTurn, method: str, rpc_id: int | str, params: dict[str, Any]) -> RequestOpened | None:
        """The pending request for server request `method`; None when tether does not support
        it (the caller then rejects it, so Codex never waits on it)."""
        item_id = str(params.get("itemId", ""))
        decisions: tuple[str, ...]
        if method == "item/commandExecution/requestApproval":
            kind = RequestKind.COMMAND_APPROVAL
            summary = " — ".join(str(p) for p in (params.get("command"), params.get("reason")) if p)
            decisions = _decisions(params)
        elif method == "item/fileChange/requestApproval":
            kind = RequestKind.FILE_CHANGE_APPROVAL
            parts = []
            if turn.file_paths.get(item_id):
                parts.append("change " + ", ".join(turn.file_paths[item_id]))
            if params.get("reason"):
                parts.append(str(params["reason"]))
            if params.get("grantRoot"):
                parts.append(f"write access to {params['grantRoot']}")
            summary = "; ".join(parts) or "apply a file change"
            decisions = _decisions(params)
        elif method == "item/tool/requestUserInput":
            kind = RequestKind.USER_INPUT
            summary = "\n".join(
                str(q.get("question") or q.get("header") or "")
                for q in params.get("questions") or []
                if isinstance(q, dict)
            )
            decisions = ()
        else:
            return None
        request_id = new_request_id()
        self._waiting[request_id] = (rpc_id, turn)
        turn.request_ids.add(request_id)
        return RequestOpened(
            request_id=request_id,
            kind=kind,
            method=method,
            params_json=json.dumps(params),
            summary=summary,
            item_id=item_id,
            available_decisions=decisions,
        )

    def take(self, request_id: str) -> int | str | None:
        """The JSON-RPC id to answer `request_id` with, once; None when nothing waits for it."""
        entry = self._waiting.pop(request_id, None)
        if entry is None:
            return None
        rpc_id, turn = entry
        turn.request_ids.discard(request_id)
        return rpc_id

    def resolved(self, turn: CodexTurn, rpc_id: Any) -> None:
        """Codex says server request `rpc_id` was resolved without our answer."""
        for request_id in list(turn.request_ids):
            entry = self._waiting.get(request_id)
            if entry is not None and entry[0] == rpc_id:
                del self._waiting[request_id]
                turn.request_ids.discard(request_id)

    def end_turn(self, turn: CodexTurn) -> None:
        """The turn is over: answers to its requests have nowhere to go now."""
        for request_id in turn.request_ids:
            self._waiting.pop(request_id, None)
        turn.request_ids.clear()


def _decisions(params: dict[str, Any]) -> tuple[str, ...]:
    available = params.get("availableDecisions")
    if not isinstance(available, list):
        return _DEFAULT_DECISIONS
    names: list[str] = []
    for decision in available:
        if isinstance(decision, str):
            names.append(decision)
        elif isinstance(decision, dict) and decision:
            names.append(next(iter(decision)))
    return tuple(names)
