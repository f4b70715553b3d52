"""Operator telemetry of the control plane: Prometheus metrics (`Metrics`) and the ASGI app
that serves them (`metrics_asgi_app`, mounted at `/metrics` on the HTTP port), and
OpenTelemetry traces of turns (`turn_tracer`, when tracing is set up; the `otel` extra).

It implements the domain's `Observer` and `TurnTracer` ports (domain/ports.py) and the hooks of
the writer and the authenticator; the composition root (`control_plane/_server.py`) wires them.
The domain never imports it.
"""

from ._metrics import MAX_RUNTIMES, Metrics, metrics_asgi_app
from ._tracing import turn_tracer

__all__ = ["MAX_RUNTIMES", "Metrics", "metrics_asgi_app", "turn_tracer"]
