"""`session/request_permission` as the runtime's pending requests.

The agent asks with a tool call and a list of options (`optionId`, `kind`: allow_once,
allow_always, reject_once, reject_always). It becomes a `RequestOpened` whose
`available_decisions` are Tether's decision names the options allow (`accept`: the first
allow_once, `acceptForSession`: allow_always, `decline`: reject_once, else reject_always;
`cancel` always: the `cancelled` outcome), then every option id as the agent names it. The
application answers `{"decision": NAME}`; the agent gets `{"outcome": {"outcome": "selected",
"optionId": ...}}` (or `cancelled`). A request lives as long as its turn: when the turn ends or
is interrupted, whatever still waits is answered `cancelled`, as ACP asks of a client.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from tether.execution_worker._acp_events import AcpTurn
from tether.execution_worker._acp_rpc import INVALID_PARAMS, AcpRpcError
from tether.execution_worker.runtime import RequestKind, RequestOpened, new_request_id

METHOD = "session/request_permission"
CANCELLED: dict[str, Any] = {"outcome": {"outcome": "cancelled"}}
_FILE_KINDS = frozenset({"edit", "delete", "move"})
#: Tether's decision names and the option kinds each takes, first match wins.
_NAMED = (
    ("accept", ("allow_once", "allow_always")),
    ("acceptForSession", ("allow_always",)),
    ("decline", ("reject_once", "reject_always")),
)


@dataclass
class _Waiting:
    turn: AcpTurn
    answer: asyncio.Future[dict[str, Any]]
    choices: dict[str, dict[str, Any]]


def _choices(options: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Decision -> the outcome the agent gets for it."""
    choices: dict[str, dict[str, Any]] = {}
    for name, kinds in _NAMED:
        for kind in kinds:
            option = next((o for o in options if o.get("kind") == kind), None)
            if option is not None:
                choices[name] = {"outcome": {"outcome": "selected", "optionId": option["optionId"]}}
                break
    choices["cancel"] = CANCELLED
    for option in options:
        choices.setdefault(
            str(option["optionId"]), {"outcome": {"outcome": "selected", "optionId": option["optionId"]}}
        )
    return choices


class Permissions:
    """The permission requests waiting for an answer, by request id."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Waiting] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    async def ask(self, turn: AcpTurn | None, params: dict[str, Any]) -> dict[str, Any]:
        """Open a pending request on `turn` and wait for its answer (the agent's request is
        served meanwhile); `cancelled` when no turn runs or the turn ends first."""
        if turn is None or turn.finished.is_set() or turn.interrupt_reason is not None:
            return CANCELLED
        options = [o for o in params.get("options") or [] if isinstance(o, dict) and o.get("optionId") is not None]
        if not options:
            raise AcpRpcError(METHOD, INVALID_PARAMS, "tether: a permission request needs options")
        tool_call: dict[str, Any] = params["toolCall"] if isinstance(params.get("toolCall"), dict) else {}
        choices = _choices(options)
        request_id = new_request_id()
        waiting = _Waiting(turn, asyncio.get_running_loop().create_future(), choices)
        self._waiting[request_id] = waiting
        turn.request_ids.add(request_id)
        kind = (
            RequestKind.FILE_CHANGE_APPROVAL if tool_call.get("kind") in _FILE_KINDS else RequestKind.COMMAND_APPROVAL
        )
        summary = str(tool_call.get("title") or "")
        for entry in tool_call.get("content") or []:
            text = entry.get("content", {}).get("text") if isinstance(entry, dict) else None
            if isinstance(text, str) and text.strip():
                summary += " — " + text.strip().splitlines()[0]
                break
        turn.queue.put_nowait(
            RequestOpened(
                request_id=request_id,
                kind=kind,
                method=METHOD,
                params_json=json.dumps(params),
                summary=summary or "the agent asks for permission",
                item_id=str(tool_call.get("toolCallId") or ""),
                available_decisions=tuple(choices),
            )
        )
        try:
            return await waiting.answer
        finally:
            self._waiting.pop(request_id, None)
            turn.request_ids.discard(request_id)

    def answer(self, request_id: str, answer: dict[str, Any]) -> tuple[bool, str | None]:
        """Deliver an answer: (delivered, why not when it was refused). Not delivered and no
        reason: nothing waits for `request_id`."""
        waiting = self._waiting.get(request_id)
        if waiting is None or waiting.answer.done():
            return False, None
        decision = answer.get("decision") if isinstance(answer, dict) else None
        outcome = waiting.choices.get(decision) if isinstance(decision, str) else None
        if outcome is None:
            return False, f"the agent takes {{'decision': one of {', '.join(map(json.dumps, waiting.choices))}}}"
        waiting.answer.set_result(outcome)
        return True, None

    def end_turn(self, turn: AcpTurn) -> None:
        """The turn is over (or interrupted): its requests are answered `cancelled`."""
        for request_id in list(turn.request_ids):
            waiting = self._waiting.get(request_id)
            if waiting is not None and not waiting.answer.done():
                waiting.answer.set_result(CANCELLED)
