"""OpenTelemetry spans of a turn on the worker, joining the control plane's trace of the turn.

The control plane puts the trace context of the turn's root span (`tether.turn`) in the
Offer (`trace_context`, W3C headers); the worker's spans of the turn are its children:
`tether.worker.turn` for the whole turn here, and inside it `tether.worker.rehydrate` (Resume
and the runtime's start, when the turn rehydrates) and `tether.runtime.turn` (the runtime's
events, up to the terminal one). Everything here is a no-op that imports nothing of
OpenTelemetry unless the offer carries a context and this process has a tracer provider
(`tether worker` sets one up from the standard `OTEL_*` variables, see `tether.logs.tracing`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from tether.v1 import worker_service_pb2

_T = TypeVar("_T")


def _tracer() -> Any:
    if "opentelemetry.trace" not in sys.modules:
        return None  # nothing set tracing up: not even the API was imported
    from opentelemetry import trace

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    return trace.get_tracer("tether.execution_worker")


def _in_a_traced_turn() -> Any:
    """The tracer, when the current task runs inside a traced turn's span; else None."""
    tracer = _tracer()
    if tracer is None:
        return None
    from opentelemetry import trace

    return tracer if trace.get_current_span().get_span_context().is_valid else None


@contextlib.contextmanager
def _turn_span(tracer: Any, offer: worker_service_pb2.Offer) -> Iterator[None]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(dict(offer.trace_context))
    attributes = {
        "tether.session_id": offer.session_id,
        "tether.turn_id": offer.turn_id,
        "tether.runtime": offer.runtime,
        "tether.lease_epoch": offer.lease_epoch,
        "tether.resume_required": offer.resume_required,
    }
    with tracer.start_as_current_span(
        "tether.worker.turn", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        yield


def in_turn_span(offer: worker_service_pb2.Offer, run: Coroutine[Any, Any, _T]) -> Coroutine[Any, Any, _T]:
    """`run` (the turn's task), inside the turn's `tether.worker.turn` span when traced; else
    `run` itself."""
    tracer = _tracer() if offer.trace_context else None
    return run if tracer is None else _spanned(tracer, offer, run)


async def _spanned(tracer: Any, offer: worker_service_pb2.Offer, run: Coroutine[Any, Any, _T]) -> _T:
    with _turn_span(tracer, offer):
        return await run


def traced_rehydrate(rehydrate: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """`rehydrate`, inside a `tether.worker.rehydrate` span when called within a traced turn."""

    async def traced(session: Any, **kwargs: Any) -> _T:
        tracer = _in_a_traced_turn()
        if tracer is None:
            return await rehydrate(session, **kwargs)
        with tracer.start_as_current_span(
            "tether.worker.rehydrate", attributes={"tether.session_id": session.session_id}
        ):
            return await rehydrate(session, **kwargs)

    return traced


def traced_events(events: AsyncIterator[_T], runtime: str) -> AsyncIterator[_T]:
    """The runtime's events of a turn, inside a `tether.runtime.turn` span when traced; else
    `events` themselves."""
    tracer = _in_a_traced_turn()
    return events if tracer is None else _spanned_events(tracer, events, runtime)


async def _spanned_events(tracer: Any, events: AsyncIterator[_T], runtime: str) -> AsyncIterator[_T]:
    # The span is not made current (the generator may be closed from elsewhere); it ends with
    # the events.
    span = tracer.start_span("tether.runtime.turn", attributes={"tether.runtime": runtime})
    count = 0
    try:
        async for event in events:
            count += 1
            yield event
        span.set_attribute("tether.runtime.last_event", type(event).__name__ if count else "")
    finally:
        span.set_attribute("tether.runtime.events", count)
        span.end()
