"""Tether control plane: sessions, turns, events, leases and snapshots over gRPC."""

from ._server import ControlPlane, serve_forever
from ._settings import Settings
from .domain.messages import Timings

__all__ = ["ControlPlane", "Settings", "Timings", "serve_forever"]
