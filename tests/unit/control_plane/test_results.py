"""Typed results: a turn sent with an output schema goes only to a runtime that honours one
(refused at once when no connected one can), and completes only when its final agent message
is JSON matching the schema; otherwise it ends turn_failed with the validation errors, in an
event the control plane writes in place of the worker's turn_completed."""

from __future__ import annotations

import json

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.model import TurnState

from .harness import OWNER, Worker, new_hub, new_session

SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"answer": {"type": "integer"}, "why": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
)


async def _run(hub, w: Worker, sid: str, message: bytes) -> str:
    turn, _ = await hub.send_input(OWNER, sid, "answer in JSON", "", output_schema=SCHEMA)
    offer = w.offer()
    assert offer.output_schema == SCHEMA
    await w.accept(offer)
    await w.write(sid, offer.lease_epoch, offer.turn_id, "turn_started", ("item_completed", message))
    await w.write(sid, offer.lease_epoch, offer.turn_id, "turn_completed")
    return turn.turn_id


async def test_a_result_that_matches_is_stored_as_the_turns_result() -> None:
    hub, store = new_hub()
    w = Worker(hub, "w", runtimes=("codex",), schema_runtimes=("codex",))
    await w.connect()
    sid = (await hub.create_session(OWNER, "codex", {}, {})).session.session_id

    turn_id = await _run(hub, w, sid, b'agent_message: {"answer": 42, "why": "it is"}')

    turn = await hub.get_turn(OWNER, sid, turn_id)
    assert turn.state == TurnState.COMPLETED and turn.output_schema == SCHEMA
    assert json.loads(turn.result_json) == {"answer": 42, "why": "it is"}
    assert store.turns[turn_id].result_json == turn.result_json
    assert store.events[sid][-1].kind == "turn_completed"


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (b'agent_message:{"answer": "forty-two"}', "at $.answer: 'forty-two' is not of type 'integer'"),
        (b'agent_message:{"why": "no answer", "extra": 1}', "'answer' is a required property"),
        (b"agent_message:forty-two", "is not JSON"),
        (b"item_completed", "produced no final message"),
    ],
)
async def test_a_result_that_does_not_match_fails_the_turn_saying_why(message: bytes, says: str) -> None:
    hub, store = new_hub()
    w = Worker(hub, "w", runtimes=("codex",), schema_runtimes=("codex",))
    await w.connect()
    sid = (await hub.create_session(OWNER, "codex", {}, {})).session.session_id

    turn_id = await _run(hub, w, sid, message)

    turn = await hub.get_turn(OWNER, sid, turn_id)
    assert turn.state == TurnState.FAILED and turn.result_json == ""
    assert says in turn.error_message
    last = store.events[sid][-1]
    assert (last.kind, last.lease_epoch, last.turn_id) == ("turn_failed", 0, turn_id)
    assert says in last.body.decode() and turn.last_seq == last.seq
    assert not [e for e in store.events[sid] if e.kind == "turn_completed"]
    # The session goes on: the next turn is offered.
    await hub.send_input(OWNER, sid, "again", "")
    assert w.offer().input == "again"


async def test_a_schema_is_refused_at_once_when_no_connected_runtime_can_honour_it() -> None:
    hub, store = new_hub()
    await Worker(hub, "w", runtimes=("shell",)).connect()
    sid = await new_session(hub)
    with pytest.raises(errors.OutputSchemaUnsupported) as refused:
        await hub.send_input(OWNER, sid, "echo {}", "", output_schema=SCHEMA)
    assert "'shell'" in str(refused.value)
    assert not [t for t in store.turns.values() if t.session_id == sid]


async def test_a_turn_with_a_schema_goes_only_to_a_worker_whose_runtime_honours_it() -> None:
    hub, _ = new_hub()
    plain = Worker(hub, "plain", runtimes=("codex",), slots=4)
    able = Worker(hub, "able", runtimes=("codex",), schema_runtimes=("codex",))
    await plain.connect()
    await able.connect()
    sid = (await hub.create_session(OWNER, "codex", {}, {})).session.session_id
    await hub.send_input(OWNER, sid, "no schema: the freest worker", "")
    offer = plain.offer()
    await plain.accept(offer)
    await plain.write(sid, offer.lease_epoch, offer.turn_id, "turn_started", "turn_completed")

    # The warm holder cannot honour a schema: the turn moves to one that can, and rehydrates.
    turn, _ = await hub.send_input(OWNER, sid, "with a schema", "", output_schema=SCHEMA)
    moved = able.offer()
    assert (moved.turn_id, moved.output_schema, moved.resume_required) == (turn.turn_id, SCHEMA, True)
    assert moved.lease_epoch == offer.lease_epoch + 1
    assert plain.only(type(offer)) == []
