"""tether.logs.tracing: which OTEL_* settings turn traces on, and the settings it refuses (with
what to set instead) before installing anything."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tether.logs import tracing

_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_which_settings_ask_for_traces(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], wanted: bool) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing.requested() is wanted


def test_nothing_asked_installs_nothing() -> None:
    assert tracing.configure("tether-test") is False


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "names 'jaeger'; Tether sends traces to otlp, console or none"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported: Tether exports OTLP over grpc or http/protobuf",
        ),
    ],
)
def test_settings_it_cannot_honour_are_refused_saying_what_to_set(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(tracing.TracingUnavailable, match=says.replace("(", r"\(")):
        tracing.configure("tether-test")


def _export_one_span(protocol: str, endpoint: str, traces_endpoint: bool) -> None:
    """A process set up from the OTEL_* variables alone (configure() installs the global
    provider, so not this one) sends one span, `tether.probe`, and flushes it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_SERVICE_NAME"] = "tether-otlp-probe"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" if traces_endpoint else "OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    if protocol:
        env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = protocol
    script = (
        "from opentelemetry import trace\n"
        "from tether.logs import tracing\n"
        "assert tracing.configure('tether-test')\n"
        "trace.get_tracer('probe').start_span('tether.probe').end()\n"
        "trace.get_tracer_provider().shutdown()\n"  # flushes the batch
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _the_probe_span(request) -> None:
    [resource_spans] = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
    assert service == "tether-otlp-probe"
    assert [s.name for scope in resource_spans.scope_spans for s in scope.spans] == ["tether.probe"]


def test_otlp_over_grpc_reaches_a_collector() -> None:
    """The default protocol: the span goes to the collector's gRPC TraceService."""
    received = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _export_one_span("", f"http://127.0.0.1:{port}", traces_endpoint=False)
    finally:
        server.stop(None)
    [request] = received
    _the_probe_span(request)


def test_otlp_over_http_reaches_a_collector() -> None:
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf: the span goes as a protobuf POST to
    the traces endpoint."""
    received: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"], body))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _export_one_span("http/protobuf", f"http://127.0.0.1:{server.server_port}/v1/traces", traces_endpoint=True)
    finally:
        server.shutdown()
    [(path, content_type, body)] = received
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    _the_probe_span(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
