"""A short turn's events leave the worker in one StreamEvents message: `turn_started` lingers
for the turn's next event (up to the outbox's LINGER_S) instead of travelling alone, and a turn
whose first event takes longer still announces its start once the linger is over. A turn's
bookkeeping events (items started and completed, token usage, history, raw runtime messages)
linger too, and go with the next output, delta, request or the turn's end. Against the
scripted control plane in tests/helpers/fake_control_plane.py."""

from __future__ import annotations

import asyncio
import time

from tests.helpers.fake_control_plane import _connected, _run_turn
from tests.helpers.processes import eventually
from tether.execution_worker._events import LINGER_S
from tether.v1 import worker_service_pb2 as wpb


def _event_messages(cp) -> list[list[str]]:
    """The kinds of the events in each StreamEvents request, in order."""
    return [
        [e.body.WhichOneof("kind") for e in entry[1].events]
        for entry in cp.log
        if entry[0] == "events" and isinstance(entry[1], wpb.StreamEventsRequest)
    ]


async def test_a_short_turns_start_travels_with_its_first_event(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    # The runtime takes a few ms before its first event (a process starting, say): without the
    # linger turn_started would be written alone as soon as it was emitted.
    w.registry.first_event_after_s = LINGER_S / 4
    await _run_turn(cp, "ses_a", "trn_1")
    messages = _event_messages(cp)
    assert messages[0][:2] == ["turn_started", "output"], messages
    assert [kind for m in messages for kind in m] == ["turn_started", "output", "turn_completed"]


async def test_a_slow_first_event_does_not_hold_the_start_back_past_the_linger(fake_cp, start_worker):
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    w.registry.first_event_after_s = 1.0
    sent = time.monotonic()
    cp.offer("ses_b", "trn_1", "cmd")
    while not _event_messages(cp):
        assert time.monotonic() - sent < 0.8, "turn_started waited for the runtime's first event"
        await asyncio.sleep(0.005)
    assert _event_messages(cp)[0] == ["turn_started"]


async def test_bookkeeping_events_travel_with_the_next_output(fake_cp, start_worker, monkeypatch):
    # A long linger, so a stall of the shared machine between two events cannot send one alone.
    monkeypatch.setattr("tether.execution_worker._events.LINGER_S", 1.0)
    cp, target = fake_cp
    w = start_worker(target)
    await _connected(cp)
    w.registry.gate.clear()  # the turn holds after its output
    w.registry.between_events_s = LINGER_S / 8  # an agent's events come a little apart
    cp.offer("ses_c", "trn_1", "reply: hi")
    await eventually(lambda: _event_messages(cp), timeout=3, what="the turn's first StreamEvents message")
    # The item's end and the token counts did not leave alone: they waited for the output.
    assert _event_messages(cp)[0] == ["turn_started", "item_completed", "token_usage", "output"]
    w.registry.gate.set()
