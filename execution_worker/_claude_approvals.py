"""Claude Code's permission prompts as the runtime's pending requests.

Started with `--permission-prompt-tool stdio`, Claude asks before a tool use its permission
mode and rules do not allow with a `control_request` of subtype `can_use_tool` (the tool, its
input, and the permission rules it suggests). Each becomes a `RequestOpened` with a fresh
request id: a command approval for `Bash` and the other tools, a file-change approval for the
editing tools. The application's answer comes back through `Runtime.respond` and goes to
Claude as the `control_response`:

- `accept`: allow this use (`{"behavior": "allow", "updatedInput": <the input>}`);
- `acceptForSession`: allow it, and add the rules Claude suggested to this session's (so the
  same use is not asked again while the process lives);
- `decline`: deny it; Claude tells the model and the turn goes on;
- `cancel`: deny it and stop the turn.

A request is forgotten once answered or when its turn ends: nothing outlives its turn.
"""

from __future__ import annotations

import json
from typing import Any

from tether.execution_worker._claude_events import FILE_TOOLS, ClaudeTurn, describe_tool
from tether.execution_worker.runtime import RequestKind, RequestOpened, new_request_id

DECISIONS = ("accept", "acceptForSession", "decline", "cancel")
METHOD = "can_use_tool"
DECLINED = "The user declined this tool use."
CANCELLED = "The user declined this tool use and stopped the turn."


class Approvals:
    """The permission prompts waiting for an answer: request id -> (Claude's id, turn, prompt)."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[str, ClaudeTurn, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self, turn: ClaudeTurn, claude_request_id: str, prompt: dict[str, Any]) -> RequestOpened:
        """The pending request for a `can_use_tool` prompt."""
        name = str(prompt.get("tool_name", ""))
        tool_input = prompt.get("input") if isinstance(prompt.get("input"), dict) else {}
        assert isinstance(tool_input, dict)
        kind = RequestKind.FILE_CHANGE_APPROVAL if name in FILE_TOOLS else RequestKind.COMMAND_APPROVAL
        summary = " — ".join(p for p in (describe_tool(name, tool_input), str(prompt.get("description") or "")) if p)
        request_id = new_request_id()
        self._waiting[request_id] = (claude_request_id, turn, prompt)
        turn.request_ids.add(request_id)
        return RequestOpened(
            request_id=request_id,
            kind=kind,
            method=METHOD,
            params_json=json.dumps(prompt),
            summary=summary,
            item_id=str(prompt.get("tool_use_id", "")),
            available_decisions=DECISIONS,
        )

    def take(self, request_id: str) -> tuple[str, ClaudeTurn, dict[str, Any]] | None:
        """Claude's request id to answer `request_id` with, its turn and the prompt, once;
        None when nothing waits for it."""
        entry = self._waiting.pop(request_id, None)
        if entry is not None:
            entry[1].request_ids.discard(request_id)
        return entry

    def end_turn(self, turn: ClaudeTurn) -> None:
        """The turn is over: answers to its requests have nowhere to go now."""
        for request_id in turn.request_ids:
            self._waiting.pop(request_id, None)
        turn.request_ids.clear()


def permission_response(answer: Any, prompt: dict[str, Any]) -> dict[str, Any] | None:
    """The `control_response` payload for an application's answer to `prompt`; None when the
    answer is not one of `DECISIONS`."""
    decision = answer.get("decision") if isinstance(answer, dict) else None
    tool_input = prompt.get("input") if isinstance(prompt.get("input"), dict) else {}
    if decision == "accept":
        return {"behavior": "allow", "updatedInput": tool_input}
    if decision == "acceptForSession":
        rules = [
            {**suggestion, "destination": "session"}
            for suggestion in prompt.get("permission_suggestions") or []
            if isinstance(suggestion, dict) and suggestion.get("type") == "addRules"
        ]
        return {"behavior": "allow", "updatedInput": tool_input, "updatedPermissions": rules}
    if decision == "decline":
        return {"behavior": "deny", "message": DECLINED}
    if decision == "cancel":
        return {"behavior": "deny", "message": CANCELLED, "interrupt": True}
    return None
