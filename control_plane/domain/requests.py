"""What an answer to a pending request must look like, by the request's kind.

The control plane checks the shape it documents in the contract (RequestKind) so a wrong
answer is refused with INVALID_ARGUMENT at the caller, instead of confusing the runtime.
"""

from __future__ import annotations

from typing import Any

from . import errors
from .model import PendingRequest, RequestKind

#: Decisions every approval kind accepts.
APPROVAL_DECISIONS = ("accept", "acceptForSession", "decline", "cancel")


def check_answer(request: PendingRequest, answer: dict[str, Any]) -> None:
    """Raise InvalidArgument("response_json", ...) when `answer` does not fit the request."""
    if request.kind in (RequestKind.COMMAND_APPROVAL, RequestKind.FILE_CHANGE_APPROVAL):
        decision = answer.get("decision")
        offered = request.available_decisions or list(APPROVAL_DECISIONS)
        if isinstance(decision, str):
            if decision not in offered and decision not in APPROVAL_DECISIONS:
                raise errors.InvalidArgument(
                    "response_json",
                    f'"decision" {decision!r} is not one this request offers: {", ".join(offered)}',
                )
            return
        if isinstance(decision, dict) and len(decision) == 1:
            (name,) = decision
            if name in offered:
                return
        raise errors.InvalidArgument(
            "response_json",
            'an approval needs {"decision": ...} with one of: ' + ", ".join(offered),
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
