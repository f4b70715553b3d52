"""An approval's answer is checked against the exact decisions its runtime listed (names, or the
JSON of decisions that carry data), so an answer the runtime would refuse is INVALID_ARGUMENT
at RespondToRequest instead of RESOLVED."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.model import PendingRequest, RequestKind, RequestState
from tether.control_plane.domain.requests import check_answer

AMENDMENT = {"acceptWithExecpolicyAmendment": {"execpolicy_amendment": ["touch", "x.txt"]}}
# What the Codex runtime lists for a command approval: Codex's list, then the names it leaves out.
CODEX_LISTED = ["accept", json.dumps(AMENDMENT), "cancel", "acceptForSession", "decline"]


def approval(available: list[str], kind: RequestKind = RequestKind.COMMAND_APPROVAL) -> PendingRequest:
    return PendingRequest(
        request_id="req_" + "0" * 26,
        session_id="ses_1",
        turn_id="trn_1",
        kind=kind,
        method="item/commandExecution/requestApproval",
        params_json="{}",
        summary="touch x.txt",
        item_id="item-1",
        available_decisions=available,
        state=RequestState.PENDING,
        create_time_us=0,
    )


@pytest.mark.parametrize(
    "decision",
    ["accept", "acceptForSession", "decline", "cancel", AMENDMENT, json.loads(json.dumps(AMENDMENT))],
)
def test_every_listed_decision_is_taken(decision: Any) -> None:
    check_answer(approval(CODEX_LISTED), {"decision": decision})


@pytest.mark.parametrize(
    "decision",
    [
        "acceptWithExecpolicyAmendment",  # the name of a decision that carries data
        {"acceptWithExecpolicyAmendment": {}},  # without its data
        {"acceptWithExecpolicyAmendment": {"execpolicy_amendment": ["rm", "-rf", "/"]}},  # not the one offered
        json.dumps(AMENDMENT),  # the JSON as a string
        "maybe",
        None,
    ],
)
def test_anything_else_is_refused_naming_every_accepted_shape(decision: Any) -> None:
    with pytest.raises(errors.InvalidArgument) as refused:
        check_answer(approval(CODEX_LISTED), {"decision": decision})
    message = refused.value.message
    assert "is not one this request takes" in message
    for shape in ('{"decision": "accept"}', '{"decision": "decline"}', json.dumps({"decision": AMENDMENT})):
        assert shape in message


def test_a_listed_name_is_exact_and_an_unlisted_runtime_takes_the_contract_names() -> None:
    with pytest.raises(errors.InvalidArgument, match='"cancel" is not one this request takes'):
        check_answer(approval(["accept", "decline"]), {"decision": "cancel"})
    for name in ("accept", "acceptForSession", "decline", "cancel"):
        check_answer(approval([], RequestKind.FILE_CHANGE_APPROVAL), {"decision": name})
    with pytest.raises(errors.InvalidArgument, match="an approval needs one of"):
        check_answer(approval([]), {"answers": {}})
