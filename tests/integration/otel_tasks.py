"""Tasks of the tracing test (issue 21): `-A tests.integration.otel_tasks:app`, in a worker whose
$QDEPLOY_TEST_OTEL_SITE has the OpenTelemetry SDK (tests/integration/test_tracing.py installs it
apart from the test venv).

The SDK's in-memory exporter behind a BatchSpanProcessor that exports only when flushed (its
delay is a minute): a recycled child's spans reach the exporter only because the worker flushes
before the child exits. What the exporter holds is also appended to $QDEPLOY_TEST_SPANS, one JSON
object per span, so the test sees the spans of children that are gone.
"""

import json
import os
import sys

sys.path.insert(0, os.environ["QDEPLOY_TEST_OTEL_SITE"])  # the SDK lives apart from the test venv

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qdeploy import App
from qdeploy.ops import tracing


class PersistedInMemory(InMemorySpanExporter):
    def export(self, spans):
        result = super().export(spans)
        with open(os.environ["QDEPLOY_TEST_SPANS"], "a") as fh:
            for span in spans:
                fh.write(json.dumps(span_dict(span)) + "\n")
        return result


def span_dict(span) -> dict:
    ctx, parent = span.get_span_context(), span.parent
    return {"name": span.name, "trace": f"{ctx.trace_id:032x}", "span": f"{ctx.span_id:016x}",
            "parent": f"{parent.span_id:016x}" if parent else None, "kind": span.kind.name,
            "status": span.status.status_code.name, "attributes": dict(span.attributes or {}),
            "events": [e.name for e in span.events], "pid": os.getpid()}


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(PersistedInMemory(), schedule_delay_millis=60000))
tracing.instrument(provider)

app = App("oteltest", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"))


@app.task(name="tr.add")
def add(x, y=0):
    return x + y


@app.task(name="tr.total")
def total(values):
    return sum(values)


@app.task(name="tr.fail")
def fail():
    raise ValueError("traced failure")


@app.task(name="tr.fanout")
def fanout(n):
    """Publishes from inside a task: the children's publish spans are children of this run."""
    return [add.delay(i, 1).id for i in range(n)]
