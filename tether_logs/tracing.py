"""OpenTelemetry for `tether serve` and `tether worker`, set up from the standard variables.

`configure(service_name)` does nothing, and imports nothing of OpenTelemetry, unless the
environment asks for traces: `OTEL_TRACES_EXPORTER` (`otlp`, `console`, or both, comma
separated; `none` turns tracing off), or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and `OTEL_SDK_DISABLED` is not `true`. Then it installs
a global tracer provider whose spans go, in batches (`OTEL_BSP_*`), to the exporters named:
OTLP or the console. OTLP goes over gRPC (`opentelemetry-exporter-otlp-proto-grpc`), or over
HTTP when `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` is
`http/protobuf` (`opentelemetry-exporter-otlp-proto-http`); either exporter reads its endpoint,
headers, certificates and timeout from the `OTEL_EXPORTER_OTLP_*` variables itself.
The service is `OTEL_SERVICE_NAME`, else `service_name`; `OTEL_RESOURCE_ATTRIBUTES` adds to it.
Spans still queued are flushed when the process exits.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["TracingUnavailable", "configure", "requested"]


class TracingUnavailable(Exception):
    """The environment asks for traces this installation cannot send; the message says why."""


def requested() -> bool:
    """Whether the environment asks for traces."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(service_name: str) -> bool:
    """Install the global tracer provider the environment asks for; returns whether it did."""
    if not requested():
        return False
    env = os.environ
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise TracingUnavailable(
            "the OTEL_* variables ask for traces but OpenTelemetry is not installed: "
            "pip install 'tether[otel]' (or unset OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_ENDPOINT)"
        ) from None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    exporters: list[SpanExporter] = []
    for name in (env.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(","):
        name = name.strip()
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporters.append(_otlp_exporter(protocol))
        else:
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER names {name!r}; Tether sends traces to otlp, console or none"
            )
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def _otlp_exporter(protocol: str) -> SpanExporter:
    """The OTLP exporter for `protocol`: `grpc` (the default) or `http/protobuf`."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as OTLPHttpSpanExporter
        except ImportError:
            raise TracingUnavailable(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs opentelemetry-exporter-otlp-proto-http: "
                "pip install 'tether[otel]' again, or set the protocol to grpc"
            ) from None
        return OTLPHttpSpanExporter()
    raise TracingUnavailable(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: Tether exports OTLP over grpc or "
        "http/protobuf; set one of those (or unset it for grpc)"
    )
