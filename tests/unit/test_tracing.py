"""Tracing in one process, exported to memory: the switch, the batcher's spans
and links, an ensemble's outgoing traceparent, and the exemplar store."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, TraceFlags
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

from serving import tracing
from serving.batching import BatchConfig, MicroBatcher
from serving.exemplars import ExemplarStore, WithExemplars, forget


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    assert tracing.start("test", exporter=exporter)
    yield exporter
    tracing.stop()


def request_span(name: str, sampled: bool = True):
    """A server span as begin_request makes it, sampled or not."""
    flags = "01" if sampled else "00"
    headers = {"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flags}"}
    return tracing.begin_request(headers, "POST", name, name, "rid")


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),
])
def test_the_standard_variables_turn_tracing_on_and_off(environ, expected):
    assert tracing.wanted(environ) == expected


def test_off_costs_no_span_and_no_context():
    assert not tracing.ENABLED
    assert tracing.span("decode") is tracing.NULL
    assert tracing.carrier() == {} and tracing.current() is None and tracing.recorded() is None
    batcher = MicroBatcher(lambda items: [i * 2 for i in items], BatchConfig(max_wait_ms=1), "m")
    assert batcher.submit([1, 2]) == [2, 4]


def test_one_batch_span_links_the_sampled_requests_it_served(spans):
    calls = []
    release = threading.Event()

    def model(items):
        calls.append(list(items))
        release.wait(5)
        return [i * 10 for i in items]

    batcher = MicroBatcher(model, BatchConfig(max_batch_size=16, max_wait_ms=200), "toy")
    results, ids = {}, {}

    def client(n: int, sampled: bool) -> None:
        span, token, trace_id = request_span(f"/r{n}", sampled)
        ids[n] = (span.get_span_context(), sampled)
        try:
            results[n] = batcher.submit([n])
        finally:
            tracing.end_request(span, token, 200, "toy", None)

    threads = [threading.Thread(target=client, args=(n, n != 2)) for n in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while batcher.queued + sum(map(len, calls)) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a condition, bounded by the deadline
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == {n: [n * 10] for n in range(4)} and len(calls) == 1  # one model call for the four

    finished = spans.get_finished_spans()
    (batch,) = [s for s in finished if s.name == "model toy"]
    sampled = {ctx.span_id for ctx, was in ids.values() if was}
    assert {link.context.span_id for link in batch.links} == sampled  # the unsampled one is not linked
    assert batch.attributes["serve.batch.size"] == 4 and batch.attributes["serve.batch.requests"] == 4
    assert batch.parent.span_id in sampled
    waits = [s for s in finished if s.name == "queue wait"]
    assert {w.parent.span_id for w in waits} == sampled  # the unsampled request records no wait
    for wait in waits:
        assert [link.context.span_id for link in wait.links] == [batch.context.span_id]
        assert wait.end_time <= batch.start_time + 2_000_000


def test_a_failed_batch_says_its_error_type_and_never_its_message(spans):
    def model(items):
        raise ValueError(f"cannot read {items[0]!r}")

    batcher = MicroBatcher(model, BatchConfig(max_wait_ms=1), "broken")
    span, token, _ = request_span("/x")
    with pytest.raises(ValueError):
        batcher.submit(["secret-input-9913"])
    tracing.end_request(span, token, 500, "broken", None)
    (failed,) = [s for s in spans.get_finished_spans() if s.name == "model broken"]
    assert failed.attributes["error.type"] == "ValueError" and failed.status.description == "ValueError"
    assert not failed.events
    everything = json.dumps([json.loads(s.to_json()) for s in spans.get_finished_spans()])
    assert "secret-input-9913" not in everything
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.attributes["http.response.status_code"] == 500 and server.attributes["error.type"] == "500"


def test_a_remote_ensemble_member_gets_the_callers_traceparent(spans, tmp_path):
    from predict import ModelRegistry, Predictor
    from tests.e2e.upstream import Upstream
    from tests.unit.test_ensemble import write_ensemble

    with Upstream(0.8, delay=0.0) as upstream:
        write_ensemble(tmp_path, "remote-pair", [{"name": "far", "model": "remote", "url": upstream.url}], combine="vote")
        registry = ModelRegistry(tmp_path)
        registry.load_all()
        span, token, trace_id = request_span("/v1/models/{name}/predict")
        try:
            outputs = Predictor(registry, batching=False).predict("remote-pair", ["a fine film"]).outputs()
        finally:
            tracing.end_request(span, token, 200, "remote-pair", None)
    assert outputs[0]["category"] == "fresh"
    (client,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert client.name == "POST far" and client.attributes["http.response.status_code"] == 200
    sent = upstream.headers[0]["traceparent"]
    assert sent == f"00-{trace_id}-{client.context.span_id:016x}-01"  # the member continues from the call


def test_exemplars_keep_the_newest_sampled_observation_per_bucket_across_processes(spans, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    registry = CollectorRegistry()
    latency = Histogram("toy_seconds", "toy", ["route"], buckets=(0.1, 1.0), registry=registry)
    store = ExemplarStore()
    unsampled, token, _ = request_span("/u", sampled=False)
    store.observe(latency, ("/a",), 0.05)  # not sampled: no exemplar
    tracing.end_request(unsampled, token, 200, None, None)
    assert store.merged() == {}
    span, token, trace_id = request_span("/a")
    store.observe(latency, ("/a",), 0.05)
    latency.labels("/a").observe(0.05)
    tracing.end_request(span, token, 200, None, None)
    # Another worker's file, with a newer exemplar in the other bucket and an older one in this.
    other = [["toy_seconds", [["route", "/a"]], {"0.1": ["0" * 32, "1" * 16, 0.07, 1.0],
                                                   "1.0": ["f" * 32, "e" * 16, 0.5, time.time() + 5]}]]
    (tmp_path / "exemplars_99999.json").write_text(json.dumps(other))
    merged = store.merged()[("toy_seconds", (("route", "/a"),))]
    assert merged["0.1"][0] == trace_id and merged["1.0"][0] == "f" * 32
    text = generate_latest(WithExemplars(registry, store)).decode()
    assert 'toy_seconds_bucket{le="0.1",route="/a"} 1.0 # {span_id="' in text
    assert f'trace_id="{trace_id}"' in text and f'trace_id="{"f" * 32}"' in text
    assert (tmp_path / f"exemplars_{os.getpid()}.json").exists()  # the first observation was written at once
    forget(99999, tmp_path)
    assert not (tmp_path / "exemplars_99999.json").exists()


def test_a_job_submission_carries_its_trace_to_the_worker(spans):
    span, token, trace_id = request_span("/v1/jobs")
    with tracing.span("job submit", kind=SpanKind.PRODUCER):
        carrier = tracing.carrier()
        submit_id = trace.get_current_span().get_span_context().span_id
    tracing.end_request(span, token, 202, None, None)
    with tracing.continued(carrier, "job run", kind=SpanKind.CONSUMER) as run:
        with tracing.span("job batch"):
            pass
    assert run.get_span_context().trace_id == int(trace_id, 16)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["job run"].parent.span_id == submit_id
    assert by_name["job batch"].parent.span_id == by_name["job run"].context.span_id
    assert by_name["job run"].parent.trace_flags == TraceFlags.SAMPLED

