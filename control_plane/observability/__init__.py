"""Operator telemetry of the control plane: Prometheus metrics (`Metrics`) and the ASGI app
that serves them (`metrics_asgi_app`, mounted at `/metrics` on the HTTP port).

It implements the domain's `Observer` port (domain/ports.py) and the hooks of the writer and
the authenticator; the composition root (`control_plane/_server.py`) wires them. The domain
never imports it.
"""

from ._metrics import MAX_RUNTIMES, Metrics, metrics_asgi_app

__all__ = ["MAX_RUNTIMES", "Metrics", "metrics_asgi_app"]
