"""The TurnTracer port as the hub drives it, with the OpenTelemetry TurnTracing on the SDK's
in-memory exporter: one root span per turn from input to end, one offer span per offer (a
declined one requeued, the accepted one accepted), the offer carrying the root's context, and
a turn its session was deleted under ending as abandoned."""

from __future__ import annotations

import dataclasses

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tether.control_plane.domain.hub import Hub
from tether.control_plane.observability import turn_tracer

from ...helpers.fake_store import FakeCodec, MemoryStore
from .harness import OWNER, TIMINGS, Worker, finish_turn, new_session, settle


def _traced_hub() -> tuple[Hub, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = MemoryStore()
    hub = Hub(store, store, FakeCodec(), dataclasses.replace(TIMINGS), tracer=turn_tracer(provider))
    return hub, exporter


async def test_a_turn_is_a_root_span_with_an_offer_span_and_the_offer_carries_the_root() -> None:
    hub, exporter = _traced_hub()
    worker = Worker(hub, "wrk_a")
    await worker.connect()
    sid = await new_session(hub)
    turn, _ = await hub.send_input(OWNER, sid, "hi", "")
    offer = worker.offer()
    headers = dict(offer.trace_context)
    await worker.accept(offer)
    await worker.write(sid, offer.lease_epoch, offer.turn_id, "turn_started")
    await finish_turn(worker, offer)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"tether.turn", "tether.offer"}
    root, offered = spans["tether.turn"], spans["tether.offer"]
    assert root.parent is None and offered.parent.span_id == root.context.span_id
    version, trace_id, parent_id, _flags = headers["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", f"{root.context.trace_id:032x}", f"{root.context.span_id:016x}")
    assert root.attributes["tether.turn_id"] == turn.turn_id and root.attributes["tether.session_id"] == sid
    assert root.attributes["tether.turn.outcome"] == "completed"
    assert root.status.status_code == StatusCode.UNSET
    assert offered.attributes["tether.offer.outcome"] == "accepted"
    assert offered.attributes["tether.worker_id"] == "wrk_a"
    assert root.start_time == turn.create_time_us * 1000


async def test_a_declined_offer_ends_requeued_and_the_next_offer_is_a_second_span() -> None:
    hub, exporter = _traced_hub()
    first = Worker(hub, "wrk_a", slots=1)
    await first.connect()
    sid = await new_session(hub)
    await hub.send_input(OWNER, sid, "hi", "")
    declined = first.offer()
    hub.reject("wrk_a", sid, declined.turn_id, "busy")
    second = Worker(hub, "wrk_b", slots=2)  # the most free slots: it gets the turn next
    await second.connect()
    taken = second.offer()
    await second.accept(taken)
    await second.write(sid, taken.lease_epoch, taken.turn_id, "turn_started", "turn_failed")
    await settle()

    offers = sorted((s for s in exporter.get_finished_spans() if s.name == "tether.offer"), key=lambda s: s.start_time)
    assert [(s.attributes["tether.worker_id"], s.attributes["tether.offer.outcome"]) for s in offers] == [
        ("wrk_a", "requeued"),
        ("wrk_b", "accepted"),
    ]
    [root] = [s for s in exporter.get_finished_spans() if s.name == "tether.turn"]
    assert {s.parent.span_id for s in offers} == {root.context.span_id}
    assert root.attributes["tether.turn.outcome"] == "failed" and root.status.status_code == StatusCode.ERROR


async def test_a_turn_whose_session_is_deleted_ends_its_trace_as_abandoned() -> None:
    hub, exporter = _traced_hub()
    sid = await new_session(hub)
    await hub.send_input(OWNER, sid, "queued, no worker", "")
    assert not exporter.get_finished_spans()  # still open
    await hub.delete_session(OWNER, sid)

    [root] = exporter.get_finished_spans()
    assert root.name == "tether.turn" and root.attributes["tether.turn.outcome"] == "abandoned"
