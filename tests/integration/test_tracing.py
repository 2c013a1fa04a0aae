"""Tracing (issue 21): one span per publish and per task run, the context in the v2 envelope's
headers, parent links through chains and chords, and spans flushed by every recycled child:
the OpenTelemetry SDK's in-memory exporter across a real worker with --max-tasks-per-child 1.

The SDK is installed into a cache directory apart from the test venv (once per machine): with
the SDK importable, redis-py imports it at `import redis`, which would change what every other
worker of the suite loads (tests/unit/test_imports.py)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import wait_until

OTEL = "opentelemetry-sdk==1.45.2"  # also brings opentelemetry-api
CACHE = Path(os.environ.get("QDEPLOY_TEST_CACHE", "/var/cache/qdeploy-tests")) / "otel-1.45.2"
APP = ["-A", "tests.integration.otel_tasks:app"]


@pytest.fixture(scope="module")
def otel_site():
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / ".otel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (CACHE / ".complete").is_file():
            staging = CACHE.with_name(CACHE.name + ".tmp")
            subprocess.run(["rm", "-rf", str(staging)], check=True)
            done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                   "--target", str(staging), OTEL], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"cannot install {OTEL}: {done.stderr[-2000:]}")
            (staging / ".complete").write_text(OTEL)
            subprocess.run(["rm", "-rf", str(CACHE)], check=True)
            staging.rename(CACHE)
    sys.path.insert(0, str(CACHE))
    yield CACHE
    sys.path.remove(str(CACHE))
    for name in [m for m in sys.modules if m.startswith("opentelemetry")]:
        del sys.modules[name]


@pytest.fixture
def traced(otel_site):
    """The producer side, in this process: the in-memory exporter behind a simple processor."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from qdeploy.ops import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(provider)
    exporter.provider = provider  # for a test's own spans
    yield exporter
    tracing.uninstrument()


def spans_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_spans_per_publish_and_run_with_parents_through_chains_and_chords(masters, tapp, traced, tmp_path, otel_site):
    from qdeploy.core.canvas import chain, chord, signature

    spans_file = tmp_path / "spans.jsonl"
    m = masters(*APP, "-c", "1", "--max-tasks-per-child", "1", "--max-tasks-jitter", "0",
                env={"QDEPLOY_TEST_OTEL_SITE": str(otel_site), "QDEPLOY_TEST_SPANS": str(spans_file)}).ready()
    plain = tapp.send_task("tr.add", [2, 3])
    failed = tapp.send_task("tr.fail")
    chained = chain(signature("tr.add", (1, 2), app=tapp), signature("tr.add", (10,), app=tapp)).apply_async()
    with traced.provider.get_tracer("test").start_as_current_span("request") as request:  # a web request, say
        chorded = chord([signature("tr.add", (i, i), app=tapp) for i in range(3)],
                        signature("tr.total", app=tapp)).apply_async()
    assert plain.get(timeout=30) == 5 and chained.get(timeout=30) == 13 and chorded.get(timeout=30) == 6
    wait_until(lambda: failed.state == "FAILURE", 30)
    runs = lambda: [s for s in spans_of(spans_file) if s["name"].startswith("run ")]  # noqa: E731
    wait_until(lambda: len(runs()) == 8, 30, 0.2, what=f"8 run spans, one per task; got {len(runs())}")
    produced = {s.attributes["messaging.message.id"]: s for s in traced.get_finished_spans()
                if "messaging.message.id" in s.attributes}
    worker = spans_of(spans_file)
    by_id = {s["span"]: s for s in worker}
    for s in traced.get_finished_spans():
        by_id[f"{s.context.span_id:016x}"] = {"name": s.name, "trace": f"{s.context.trace_id:032x}",
                                              "span": f"{s.context.span_id:016x}", "kind": s.kind.name,
                                              "parent": f"{s.parent.span_id:016x}" if s.parent else None}
    run_of = {s["attributes"]["messaging.message.id"]: s for s in runs()}
    assert len({s["pid"] for s in runs()}) == 8  # every task in its own child: each flushed before exiting
    # a plain task: its run is a child of its publish, in the producer's trace
    pub = produced[plain.id]
    assert run_of[plain.id]["parent"] == f"{pub.context.span_id:016x}" and run_of[plain.id]["kind"] == "CONSUMER"
    assert run_of[plain.id]["trace"] == f"{pub.context.trace_id:032x}" and pub.kind.name == "PRODUCER"
    assert failed.id in run_of, (failed.id, list(run_of))
    assert run_of[failed.id]["status"] == "ERROR" and "exception" in run_of[failed.id]["events"]
    # a chain: step 2 was published by step 1's run (its publish span is a child of that run)
    first_id = chained.parent.id if getattr(chained, "parent", None) else None
    second = run_of[chained.id]
    publish_2 = by_id[second["parent"]]
    assert publish_2["name"] == "publish tr.add" and publish_2["kind"] == "PRODUCER"
    first = by_id[publish_2["parent"]]
    assert first["name"] == "run tr.add" and (first_id is None or first["attributes"]["messaging.message.id"] == first_id)
    assert len({second["trace"], publish_2["trace"], first["trace"]}) == 1
    # a chord: its body's message is made (and published to the chord's key) by the producer
    # with the header, so the body's run is a child of that publish, in the header's trace
    body = run_of[chorded.id]
    body_publish = produced[chorded.id]
    assert body["parent"] == f"{body_publish.context.span_id:016x}" and body_publish.name == "publish tr.total"
    assert body_publish.parent.span_id == request.get_span_context().span_id
    header_runs = [s for s in runs() if s["trace"] == body["trace"] and s["attributes"]["qdeploy.task"] == "tr.add"]
    assert len(header_runs) == 3, "the header's runs are in the request's trace, with the body's"
    assert all(by_id[s["parent"]]["parent"] == f"{request.get_span_context().span_id:016x}" for s in header_runs)
    m.signal(15)
    assert m.wait(30) == 0
