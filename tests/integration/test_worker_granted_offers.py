"""A worker runs an offer that carries its grant without accepting it (it announced
"granted_offer"); it runs it after the session's previous turn when that is still finishing,
and never runs one for a lease it has released (the control plane queues that turn again).
Against the scripted control plane in tests/helpers/fake_control_plane.py."""

from __future__ import annotations

import asyncio

from tests.helpers.fake_control_plane import _connected, _run_turn
from tests.helpers.processes import eventually


async def test_the_worker_announces_the_feature_and_runs_a_granted_offer_without_accepting(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    assert "granted_offer" in cp.registrations[-1].features
    await _run_turn(cp, "ses_a", "trn_1")
    accepts = len(cp.lease_requests("accept"))

    await _run_turn(cp, "ses_a", "trn_2", granted=True)

    assert len(cp.lease_requests("accept")) == accepts  # nothing to accept
    assert [e.turn_id for e in cp.terminal_events("ses_a")] == ["trn_1", "trn_2"]
    assert [t for _, t in w.registry.turns] == ["trn_1", "trn_2"]
    assert len(w.registry.instances) == 1  # on the warm runtime


async def test_a_granted_offer_waits_for_the_sessions_previous_turn(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    w.registry.gate.clear()  # turns hold until the gate opens
    cp.offer("ses_a", "trn_2", "cmd", granted=True)
    await eventually(lambda: len(w.registry.turns) == 2, timeout=3, what="trn_2 running")
    cp.offer("ses_a", "trn_3", "cmd", granted=True)  # as if trn_2's end had crossed it
    await asyncio.sleep(0.1)
    assert [t for _, t in w.registry.turns] == ["trn_1", "trn_2"]

    w.registry.gate.set()
    await eventually(lambda: len(cp.terminal_events("ses_a")) == 3, timeout=3, what="trn_3 to end")
    assert [e.turn_id for e in cp.terminal_events("ses_a")] == ["trn_1", "trn_2", "trn_3"]


async def test_a_granted_offer_for_a_released_lease_is_not_run(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target, warm_sessions=1)
    await _connected(cp)
    await _run_turn(cp, "ses_a", "trn_1")
    await _run_turn(cp, "ses_b", "trn_2")  # cools ses_a: its lease goes back
    await eventually(lambda: cp.lease_requests("release"), timeout=3, what="ses_a released")
    turns = len(w.registry.turns)

    cp.offer("ses_a", "trn_3", "cmd", granted=True)  # it crossed the release on the wire
    await asyncio.sleep(0.2)

    assert len(w.registry.turns) == turns
    assert "ses_a" not in w.worker.session_ids
    assert not [e for e in cp.stored if e[1].turn_id == "trn_3"]


async def test_after_a_broken_stream_lease_open_names_the_turns_the_worker_knows(fake_cp, start_worker):
    """The next LeaseOpen lists the running turn and the granted one waiting for it (so the
    control plane leaves them be), not a turn that ended and was acknowledged, and not an
    accepted offer whose grant never came (the control plane queues that one again)."""
    cp, target = fake_cp
    w = start_worker(target, slots=2)
    await _connected(cp)
    assert "reports_turns" in cp.registrations[-1].features
    await _run_turn(cp, "ses_a", "trn_1")
    w.registry.gate.clear()  # turns hold until the gate opens
    cp.offer("ses_a", "trn_2", "cmd", granted=True)
    await eventually(lambda: len(w.registry.turns) == 2, timeout=3, what="trn_2 running")
    cp.offer("ses_a", "trn_3", "cmd", granted=True)  # waits for trn_2
    cp.auto_grant = False
    cp.offer("ses_b", "trn_4", "cmd")  # accepted; its grant is lost with the stream
    await eventually(
        lambda: cp.lease_requests("accept", stream=1)[-1].accept.turn_id == "trn_4", timeout=3, what="accept"
    )

    cp.drop_stream()
    await _connected(cp, streams=2)

    opens = cp.lease_requests("open", stream=2)
    assert [(r.session_id, r.lease_epoch) for r in opens[0].open.leases] == [("ses_a", 1)]
    assert sorted(opens[0].open.turn_ids) == ["trn_2", "trn_3"]
    w.registry.gate.set()
