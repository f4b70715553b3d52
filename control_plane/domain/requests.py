"""What an answer to a pending request must look like, by the request's kind.

The control plane checks the shape it documents in the contract (RequestKind) so a wrong
answer is refused with INVALID_ARGUMENT at the caller, instead of confusing the runtime.

An approval's `available_decisions`, when the runtime lists them, are exactly the decisions it
takes, and nothing else is accepted: an entry is a decision name (answered as
`{"decision": NAME}`) or the JSON of a decision that carries data (answered as
`{"decision": <that JSON>}`). The control plane compares answers with the list and knows no
runtime's decisions itself; a runtime that lists none takes the four names of the contract.
"""

from __future__ import annotations

import json
from typing import Any

from . import errors
from .model import PendingRequest, RequestKind

#: Decisions an approval takes when its runtime lists none.
APPROVAL_DECISIONS = ("accept", "acceptForSession", "decline", "cancel")


def check_answer(request: PendingRequest, answer: dict[str, Any]) -> None:
    """Raise InvalidArgument("response_json", ...) when `answer` does not fit the request."""
    if request.kind in (RequestKind.COMMAND_APPROVAL, RequestKind.FILE_CHANGE_APPROVAL):
        offered = [_decision_of(entry) for entry in request.available_decisions or APPROVAL_DECISIONS]
        if "decision" in answer and answer["decision"] in offered:
            return
        shapes = ", ".join(json.dumps({"decision": d}) for d in offered)
        if "decision" not in answer:
            raise errors.InvalidArgument("response_json", f"an approval needs one of: {shapes}")
        raise errors.InvalidArgument(
            "response_json",
            f'"decision" {json.dumps(answer["decision"])} is not one this request takes; it takes exactly one of: {shapes}',
        )
    if request.kind == RequestKind.USER_INPUT:
        answers = answer.get("answers")
        if not isinstance(answers, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("answers"), list) for v in answers.values()
        ):
            raise errors.InvalidArgument(
                "response_json",
                'user input needs {"answers": {"<question id>": {"answers": ["..."]}}}',
            )


def _decision_of(entry: str) -> Any:
    """An `available_decisions` entry as the decision it stands for: a JSON object for an entry
    that is one, else the name itself."""
    if entry.startswith("{"):
        try:
            decision = json.loads(entry)
        except ValueError:
            return entry
        if isinstance(decision, dict):
            return decision
    return entry
