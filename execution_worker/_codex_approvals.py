"""Codex's server requests (command and file-change approvals, questions for the user) as the
runtime's pending requests.

A request Codex sends during a turn becomes a `RequestOpened` with a fresh request id; the
application's answer comes back through `Runtime.respond` and goes to Codex as the JSON-RPC
result of that server request. A request is forgotten once answered, once Codex says it was
resolved otherwise, or when its turn ends: nothing outlives the turn it belongs to.

An approval's `available_decisions` are exactly the answers the pinned Codex (0.169) takes for
it: each entry is a decision name (answered as `{"decision": NAME}`) or, for a decision that
carries data, that decision's JSON (answered as `{"decision": <that JSON>}`, for example the
`acceptWithExecpolicyAmendment` Codex proposes). The control plane holds answers to that list;
`answer_problem` checks an answer against Codex's own schema once more before it is sent, as
Codex takes an answer it cannot read as a failed approval.
"""

from __future__ import annotations

import json
from typing import Any

from tether.execution_worker._codex_events import CodexTurn
from tether.execution_worker.runtime import RequestKind, RequestOpened, new_request_id

#: The decisions by name that both approval kinds take (Codex's CommandExecutionApprovalDecision
#: and FileChangeApprovalDecision); Codex's own `availableDecisions` leaves some out.
DECISION_NAMES = ("accept", "acceptForSession", "decline", "cancel")
_COMMAND_APPROVAL = "item/commandExecution/requestApproval"
_FILE_CHANGE_APPROVAL = "item/fileChange/requestApproval"
_USER_INPUT = "item/tool/requestUserInput"


class Approvals:
    """The server requests waiting for an answer: request id -> (JSON-RPC id, turn)."""

    def __init__(self) -> None:
        # request id -> (JSON-RPC id, turn, method)
        self._waiting: dict[str, tuple[int | str, CodexTurn, str]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self, turn: CodexTurn, method: str, rpc_id: int | str, params: dict[str, Any]) -> RequestOpened | None:
        """The pending request for server request `method`; None when tether does not support
        it (the caller then rejects it, so Codex never waits on it)."""
        item_id = str(params.get("itemId", ""))
        decisions: tuple[str, ...]
        if method == _COMMAND_APPROVAL:
            kind = RequestKind.COMMAND_APPROVAL
            summary = " — ".join(str(p) for p in (params.get("command"), params.get("reason")) if p)
            decisions = _command_decisions(params)
        elif method == _FILE_CHANGE_APPROVAL:
            kind = RequestKind.FILE_CHANGE_APPROVAL
            parts = []
            if turn.file_paths.get(item_id):
                parts.append("change " + ", ".join(turn.file_paths[item_id]))
            if params.get("reason"):
                parts.append(str(params["reason"]))
            if params.get("grantRoot"):
                parts.append(f"write access to {params['grantRoot']}")
            summary = "; ".join(parts) or "apply a file change"
            decisions = DECISION_NAMES
        elif method == _USER_INPUT:
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
        self._waiting[request_id] = (rpc_id, turn, method)
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

    def take(self, request_id: str) -> tuple[int | str, CodexTurn, str] | None:
        """The JSON-RPC id to answer `request_id` with, its turn and its method, once; None when
        nothing waits for it."""
        entry = self._waiting.pop(request_id, None)
        if entry is None:
            return None
        entry[1].request_ids.discard(request_id)
        return entry

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


def _command_decisions(params: dict[str, Any]) -> tuple[str, ...]:
    """Codex's `availableDecisions` as tether lists them (a decision that carries data as its
    JSON), then the names Codex takes but leaves out; without a list, every name and the
    amendments Codex proposes."""
    offered = params.get("availableDecisions")
    if not isinstance(offered, list):
        offered = list(DECISION_NAMES)
        amendment = params.get("proposedExecpolicyAmendment")
        if _is_strings(amendment):
            offered.append({"acceptWithExecpolicyAmendment": {"execpolicy_amendment": amendment}})
        for network in params.get("proposedNetworkPolicyAmendments") or []:
            offered.append({"applyNetworkPolicyAmendment": {"network_policy_amendment": network}})
    decisions: list[str] = []
    for decision in offered:
        entry = decision if isinstance(decision, str) else json.dumps(decision)
        if _decision_problem(decision) is None and entry not in decisions:
            decisions.append(entry)
    decisions.extend(name for name in DECISION_NAMES if name not in decisions)
    return tuple(decisions)


def answer_problem(method: str, answer: Any) -> str | None:
    """Why Codex would not take `answer` to a `method` server request; None when it would."""
    if not isinstance(answer, dict):
        return "the answer is not a JSON object"
    if method == _USER_INPUT:
        answers = answer.get("answers")
        if isinstance(answers, dict) and all(
            isinstance(a, dict) and _is_strings(a.get("answers")) for a in answers.values()
        ):
            return None
        return 'Codex takes {"answers": {"<question id>": {"answers": ["..."]}}}'
    if "decision" not in answer:
        return 'Codex takes {"decision": ...}'
    decision = answer["decision"]
    if method == _FILE_CHANGE_APPROVAL:
        if decision in DECISION_NAMES:
            return None
        return f"Codex takes a file-change decision of {', '.join(map(json.dumps, DECISION_NAMES))}"
    return _decision_problem(decision)


def _decision_problem(decision: Any) -> str | None:
    """Why `decision` is not a CommandExecutionApprovalDecision of the pinned Codex."""
    if isinstance(decision, str):
        if decision in DECISION_NAMES:
            return None
    elif isinstance(decision, dict) and len(decision) == 1:
        ((name, value),) = decision.items()
        if name == "acceptWithExecpolicyAmendment":
            if isinstance(value, dict) and _is_strings(value.get("execpolicy_amendment")):
                return None
        elif name == "applyNetworkPolicyAmendment":
            rule = value.get("network_policy_amendment") if isinstance(value, dict) else None
            if isinstance(rule, dict) and rule.get("action") in ("allow", "deny") and isinstance(rule.get("host"), str):
                return None
    return (
        f"Codex takes a command decision of {', '.join(map(json.dumps, DECISION_NAMES))}, "
        '{"acceptWithExecpolicyAmendment": {"execpolicy_amendment": ["..."]}} or '
        '{"applyNetworkPolicyAmendment": {"network_policy_amendment": {"action": "allow"|"deny", "host": "..."}}}'
    )


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
