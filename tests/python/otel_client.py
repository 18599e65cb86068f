"""A client traced with the official OpenTelemetry SDK (tests/tests/otel.rs).

Starts a span with the SDK's tracer, injects its context into the request
headers with the SDK's W3C propagator (`traceparent`), calls the gateway at
GATEWAY_HOST:PORT with PATH, and prints one JSON line: the status, the trace
id and span id the SDK made (hex), and the headers it sent.
"""

import json
import sys
import urllib.request

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sdk_common import TIMEOUT_SECONDS, gateway_address


def main() -> None:
    gateway = gateway_address()
    path = sys.argv[2] if len(sys.argv) > 2 else "/"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("hypergate-test-client")
    with tracer.start_as_current_span("checkout", kind=trace.SpanKind.CLIENT) as span:
        headers = {}
        TraceContextTextMapPropagator().inject(headers)
        request = urllib.request.Request(f"http://{gateway}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
        ctx = span.get_span_context()
    provider.shutdown()
    print(
        json.dumps(
            {
                "status": status,
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
                "sent": headers,
                "finished_spans": len(exporter.get_finished_spans()),
            }
        )
    )


if __name__ == "__main__":
    main()
