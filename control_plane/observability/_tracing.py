"""OpenTelemetry traces of turns: the domain's `TurnTracer`, one trace per turn.

The trace's root span, `tether.turn`, runs from the turn's input (its create time) to its end;
`tether.offer` spans each offer, from dispatch to the worker's accept (or to the offer going
back to the queue). The offer carries the root's context to the worker as W3C Trace Context
headers (`Offer.trace_context`), so a tracing worker's spans of the turn (`tether.worker.turn`,
its rehydration and its runtime) are children of the root. When the input came with the
caller's W3C trace context (SendInput's `traceparent` metadata or header), the root is a child of
the caller's span, in the caller's trace.

Only `turn_tracer()` is imported by the control plane: it returns None, importing nothing of
OpenTelemetry, unless a tracer provider has been configured in this process (`tether serve`
does so from the standard `OTEL_*` variables, see `tether.logs.tracing`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..domain.model import Turn, TurnState
from ..domain.ports import TurnTracer

__all__ = ["TurnTracing", "turn_tracer"]


def turn_tracer(tracer_provider: Any = None) -> TurnTracer | None:
    """A TurnTracer on `tracer_provider` (default: the global one, when one was set), else None."""
    if tracer_provider is None:
        if "opentelemetry.trace" not in sys.modules:
            return None  # nothing configured tracing: not even the API was imported
        from opentelemetry import trace

        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return None  # the API is loaded, but no provider was set: spans would go nowhere
    return TurnTracing(tracer_provider)


@dataclass
class _Traced:
    root: Any  # opentelemetry.trace.Span
    offer: Any = None  # the offer out, if any


class TurnTracing:
    """The TurnTracer on OpenTelemetry. Keeps the spans of the open turns it saw queued."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._tracer = trace.get_tracer("tether.control_plane", tracer_provider=tracer_provider)
        self._propagator = TraceContextTextMapPropagator()
        self._open: dict[str, _Traced] = {}

    def queued(self, turn: Turn, runtime: str, caller: Mapping[str, str] | None = None) -> None:
        root = self._tracer.start_span(
            "tether.turn",
            # The caller's span, when its input came with W3C trace context; else a new trace.
            context=self._propagator.extract(caller) if caller else None,
            kind=self._trace.SpanKind.SERVER,
            start_time=turn.create_time_us * 1000,
            attributes={
                "tether.session_id": turn.session_id,
                "tether.turn_id": turn.turn_id,
                "tether.runtime": runtime,
            },
        )
        self._open[turn.turn_id] = _Traced(root)

    def offered(self, turn: Turn, worker_id: str, epoch: int) -> dict[str, str]:
        traced = self._open.get(turn.turn_id)
        if traced is None:
            return {}
        context = self._trace.set_span_in_context(traced.root)
        traced.offer = self._tracer.start_span(
            "tether.offer",
            context=context,
            kind=self._trace.SpanKind.PRODUCER,
            attributes={"tether.worker_id": worker_id, "tether.lease_epoch": epoch},
        )
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=context)
        return headers

    def withdrawn(self, turn: Turn) -> None:
        self._end_offer(turn, "requeued")

    def accepted(self, turn: Turn) -> None:
        self._end_offer(turn, "accepted")

    def _end_offer(self, turn: Turn, outcome: str) -> None:
        traced = self._open.get(turn.turn_id)
        if traced is not None and traced.offer is not None:
            traced.offer.set_attribute("tether.offer.outcome", outcome)
            traced.offer.end()
            traced.offer = None

    def ended(self, turn: Turn) -> None:
        self._end(turn, turn.state.name.lower())

    def abandoned(self, turn: Turn) -> None:
        self._end(turn, "abandoned")

    def _end(self, turn: Turn, outcome: str) -> None:
        traced = self._open.pop(turn.turn_id, None)
        if traced is None:
            return
        if traced.offer is not None:  # ended while on offer (interrupted)
            traced.offer.set_attribute("tether.offer.outcome", "withdrawn")
            traced.offer.end()
        root = traced.root
        root.set_attribute("tether.turn.outcome", outcome)
        if turn.worker_id:
            root.set_attribute("tether.worker_id", turn.worker_id)
        if turn.state == TurnState.FAILED:
            root.set_status(self._trace.Status(self._trace.StatusCode.ERROR, turn.error_message[:500]))
        root.end(end_time=(turn.end_time_us * 1000) or None)
