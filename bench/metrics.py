"""metrics_scrape_ms: one scrape of /metrics with 10,000 sessions loaded.

An in-process control plane on a fresh SQLite file (the ASGI app of `metrics_asgi_app` is
called on the control plane's own loop, as its HTTP port serves it) gets SESSIONS sessions
through the SDK, QUEUED of them with a turn waiting for a worker that never comes (a selector
no worker matches), so the scrape-time gauges have a queue to walk; every session stays loaded
(the session idle time is an hour). Then SCRAPES scrapes one after another, each timed from the
call to the last byte of the response; p50 and max. `metrics_scrape_sessions_loaded` is what
the scrape itself said, to show the sessions were loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import tempfile
import time

from prometheus_client.parser import text_string_to_metric_families

from tether import sdk
from tether.control_plane import ControlPlane, Settings, Timings
from tether.control_plane.observability import Metrics, metrics_asgi_app

from ._harness import emit, percentile

SESSIONS = int(os.environ.get("TETHER_BENCH_SESSIONS", "10000"))
QUEUED = 100
SCRAPES = 200
DRIVERS = 32


async def _scrape(app, scope: dict) -> bytes:
    body: list[bytes] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            body.append(message["body"])
        elif message["status"] != 200:
            raise RuntimeError(f"/metrics answered {message['status']}")

    await app(scope, receive, send)
    return b"".join(body)


def _loaded(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "tether_sessions_loaded":
            return family.samples[0].value
    raise RuntimeError("the scrape has no tether_sessions_loaded")


async def _create(client: sdk.AsyncClient, count: int, queued: int) -> None:
    left = iter(range(count))

    async def drive() -> None:
        for i in left:
            if i < queued:
                s = await client.create_session("shell", worker_selector={"pool": "none"})
                await client.send_input(s.session_id, "true")
            else:
                await client.create_session("shell")

    await asyncio.gather(*(drive() for _ in range(DRIVERS)))


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tether-bench-metrics-") as tmp:
        timings = dataclasses.replace(Timings(), session_idle_s=3600.0)
        settings = Settings(port=0, db=str(pathlib.Path(tmp) / "tether.db"), timings=timings, dev_owner="local")
        async with ControlPlane(settings) as cp:
            async with sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
                built = time.monotonic()
                await _create(client, SESSIONS, QUEUED)
                built_s = time.monotonic() - built
            metrics: Metrics = cp.metrics
            app = metrics_asgi_app(metrics)
            scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"", "headers": []}
            text = (await _scrape(app, scope)).decode()  # warm-up, and what it says
            times = []
            for _ in range(SCRAPES):
                t0 = time.perf_counter()
                await _scrape(app, scope)
                times.append((time.perf_counter() - t0) * 1000)
    extra = {"sessions": SESSIONS, "queued_turns": QUEUED, "scrapes": SCRAPES}
    emit("metrics_scrape_ms", percentile(times, 50), "ms", **extra, max_ms=round(max(times), 3))
    emit("metrics_scrape_sessions_loaded", _loaded(text), "sessions", build_s=round(built_s, 1))
    emit("metrics_scrape_bytes", len(text), "bytes")
