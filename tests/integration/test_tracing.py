"""OpenTelemetry traces of turns (the `otel` extra): one trace per turn, across processes.

A real in-process control plane traces into the SDK's in-memory exporter; a real `tether
worker` process is set up from the standard variables alone (`OTEL_TRACES_EXPORTER=console`)
and prints its spans. One turn's spans must form one tree: `tether.turn` (the root, from the
input to the end) with `tether.offer` under it on the control plane, and the worker's
`tether.worker.turn` under the root (its context came in the Offer), holding
`tether.worker.rehydrate` and `tether.runtime.turn`. Without a tracer provider, no offer
carries a context and nothing is traced.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.request

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.helpers.processes import FAST, ROOT, eventually, worker_args
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.observability import turn_tracer
from tether.v1 import session_service_pb2, session_service_pb2_grpc


def _console_spans(text: str) -> list[dict]:
    """The spans ConsoleSpanExporter printed: JSON objects one after another."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (start := text.find("{", at)) != -1:
        span, at = decoder.raw_decode(text, start)
        spans.append(span)
    return spans


class _Worker:
    """A `tether worker` process whose stdout (where the console exporter prints) and stderr
    are kept in files; always reaped."""

    def __init__(self, args: list[str], tmp: pathlib.Path, env: dict[str, str]) -> None:
        self._out = open(tmp / "worker.stdout", "wb")
        self._err = open(tmp / "worker.stderr", "wb")
        self.popen = subprocess.Popen(args, stdout=self._out, stderr=self._err, env=env, cwd=ROOT)

    def reap(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._out.close()
        self._err.close()


def _hex(value: int) -> str:
    return f"0x{value:032x}" if value > 2**64 else f"0x{value:016x}"


async def test_one_turn_is_one_trace_from_send_input_through_the_worker(tmp_path: pathlib.Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cp = ControlPlane(Settings(port=0, db=str(tmp_path / "tether.db"), timings=FAST, dev_owner="local"))
    cp.tracer_provider = provider
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "tether-worker-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    async with cp:
        target = f"127.0.0.1:{cp.port}"
        worker = _Worker(worker_args(target, tmp_path / "w", 1, "--worker-id", "wkr_traced"), tmp_path, env)
        try:
            async with sdk.AsyncClient(target) as client:

                async def connected() -> bool:
                    return any(w.connected for w in await client.list_workers())

                await eventually(connected, timeout=30, what="the worker connected")
                session = await client.create_session("shell")
                turn = await client.send_input(session.session_id, "echo traced")
                done = await client.wait_for_turn(session.session_id, turn.turn_id, timeout_s=30)
                assert done.state == sdk.TurnState.COMPLETED
        finally:
            worker.popen.send_signal(signal.SIGTERM)  # it drains, exits, and flushes its spans
            try:  # the loop keeps serving the control plane meanwhile: the drain needs it
                await eventually(lambda: worker.popen.poll() is not None, timeout=30, what="the worker to exit")
            finally:
                worker.reap()
    assert worker.popen.returncode == 0, (tmp_path / "worker.stderr").read_text()

    ours = {s.name: s for s in exporter.get_finished_spans()}
    assert set(ours) == {"tether.turn", "tether.offer"}
    root, offer = ours["tether.turn"], ours["tether.offer"]
    trace_id = root.context.trace_id
    assert root.parent is None
    assert dict(root.attributes) == {
        "tether.session_id": session.session_id,
        "tether.turn_id": turn.turn_id,
        "tether.runtime": "shell",
        "tether.turn.outcome": "completed",
        "tether.worker_id": "wkr_traced",
    }
    assert offer.context.trace_id == trace_id and offer.parent.span_id == root.context.span_id
    assert offer.attributes["tether.worker_id"] == "wkr_traced"
    assert offer.attributes["tether.offer.outcome"] == "accepted"
    assert root.start_time <= offer.start_time <= offer.end_time <= root.end_time

    theirs = {s["name"]: s for s in _console_spans((tmp_path / "worker.stdout").read_text())}
    assert set(theirs) == {"tether.worker.turn", "tether.worker.rehydrate", "tether.runtime.turn"}, theirs
    on_worker, rehydrate, runtime = (
        theirs[n] for n in ("tether.worker.turn", "tether.worker.rehydrate", "tether.runtime.turn")
    )
    assert {s["context"]["trace_id"] for s in theirs.values()} == {_hex(trace_id)}
    assert on_worker["parent_id"] == f"0x{root.context.span_id:016x}"  # joined through the Offer
    assert rehydrate["parent_id"] == runtime["parent_id"] == on_worker["context"]["span_id"]
    assert on_worker["attributes"]["tether.turn_id"] == turn.turn_id
    assert on_worker["attributes"]["tether.resume_required"] is True
    assert runtime["attributes"]["tether.runtime.last_event"] == "TurnCompleted"
    assert on_worker["resource"]["attributes"]["service.name"] == "tether-worker-under-test"


def test_without_a_tracer_provider_nothing_is_traced() -> None:
    if "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            pytest.skip("a global tracer provider was set in this process")
    assert turn_tracer() is None


async def test_a_turn_continues_the_trace_its_input_came_with(tmp_path: pathlib.Path) -> None:
    """An application that traces sends W3C trace context with SendInput (gRPC metadata, as
    OpenTelemetry's gRPC instrumentation does, or HTTP headers on the HTTP port): the turn's
    root span is a child of the application's span, in the application's trace. A malformed
    `traceparent` starts a new trace."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(port=0, http_port=0, db=str(tmp_path / "tether.db"), timings=FAST, dev_owner="local")
    cp = ControlPlane(settings)
    cp.tracer_provider = provider
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traced = f"00-{trace_id}-{span_id}-01"
    async with cp, sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
        assert cp.http is not None
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}")
        stub = session_service_pb2_grpc.SessionServiceStub(channel)

        def over_http(session_id: str, parent: str) -> str:
            request = urllib.request.Request(
                f"http://127.0.0.1:{cp.http.port}/tether.v1.SessionService/SendInput",
                data=json.dumps({"sessionId": session_id, "input": "http"}).encode(),
                headers={"content-type": "application/json", "traceparent": parent, "tracestate": "app=1"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.load(answer)["turn"]["turnId"]

        turns = {}
        for name, parent in (("grpc", traced), ("http", traced), ("malformed", "00-not-a-trace-01")):
            session = await client.create_session("nobody-runs-this")
            if name == "http":
                turn_id = await asyncio.to_thread(over_http, session.session_id, parent)
            else:
                sent = await stub.SendInput(
                    session_service_pb2.SendInputRequest(session_id=session.session_id, input=name),
                    metadata=(("traceparent", parent), ("tracestate", "app=1")),
                )
                turn_id = sent.turn.turn_id
            turns[turn_id] = name
            await client.delete_session(session.session_id)  # ends the queued turn's trace (abandoned)
        await channel.close()
    roots = {turns[s.attributes["tether.turn_id"]]: s for s in exporter.get_finished_spans() if s.name == "tether.turn"}
    for name in ("grpc", "http"):
        root = roots[name]
        assert f"{root.context.trace_id:032x}" == trace_id, name
        assert root.parent is not None and root.parent.is_remote and f"{root.parent.span_id:016x}" == span_id, name
        assert root.context.trace_state.get("app") == "1", name
    malformed = roots["malformed"]
    assert malformed.parent is None and f"{malformed.context.trace_id:032x}" != trace_id
