"""Traces and exemplars against a real Gunicorn (2 workers) and a job worker,
exporting by OTLP/HTTP to a receiver this test starts on loopback."""

from __future__ import annotations

import random
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from serving.settings import REPO_ROOT
from tests.e2e.otlp import OtlpReceiver, ReceivedSpan
from tests.e2e.server import JobStack, wait_for

pytestmark = pytest.mark.e2e

SERVER, CONSUMER, PRODUCER = 2, 5, 4  # the protobuf's SpanKind numbers
# Inputs no span may carry.
SECRETS = ["quokka-marmalade-7731 was a wonderful film", "zebra-lantern-2219 a dull plot", "tapir-sonata-0042"]


def ids() -> tuple[str, str]:
    return f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as found:
        yield found


@pytest.fixture(scope="module")
def stack(receiver, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracing")
    repo = tmp / "models"
    shutil.copytree(REPO_ROOT / "models" / "sentiment", repo / "sentiment")
    manifest = repo / "sentiment" / "model.yaml"
    # A batch window wide enough that concurrent requests share a model call.
    manifest.write_text(manifest.read_text().replace("max_wait_ms: 0", "max_wait_ms: 150"))
    env = {
        "SERVE_MODEL_REPOSITORY": str(repo),
        "WORKERS": "2",
        "THREADS": "8",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "serve-http-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    with JobStack.running("embedded", tmp, env) as running:
        yield running


def by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def test_a_request_continues_the_clients_trace_down_to_its_batch(stack, receiver):
    trace_id, parent = ids()
    r = requests.post(
        stack.url + "/v1/models/sentiment/predict",
        json={"inputs": [SECRETS[0]]},
        headers={"traceparent": traceparent(trace_id, parent), "tracestate": "vendor=abc"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    names = {"POST /v1/models/{name}/predict", "decode", "cache lookup", "queue wait", "model sentiment"}
    spans = receiver.wait(
        lambda: (found := receiver.trace(trace_id)) and names <= {s.name for s in found} and found,
        what=f"the spans {sorted(names)} of trace {trace_id}",
    )
    (root,) = by_name(spans, "POST /v1/models/{name}/predict")
    assert root.kind == SERVER
    assert root.parent_span_id == parent  # continued from the client's traceparent
    assert root.trace_state == "vendor=abc"
    assert root.attributes["http.route"] == "/v1/models/{name}/predict"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["serve.model"] == "sentiment"
    assert root.attributes["serve.request_id"] == r.headers["X-Request-ID"]
    assert root.resource["service.name"] == "serve-http-e2e"
    assert root.resource["serve.role"] == "web"
    assert root.resource["process.pid"] != stack.server.pid  # a worker's provider, never the master's
    (decode,) = by_name(spans, "decode")
    (cache,) = by_name(spans, "cache lookup")
    (wait,) = by_name(spans, "queue wait")
    (batch,) = by_name(spans, "model sentiment")
    for child in (decode, cache, wait):
        assert child.parent_span_id == root.span_id
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns
    assert cache.attributes["serve.cache.misses"] == 1
    # The batch span is the request's child and linked to it; the wait links back.
    assert batch.parent_span_id == root.span_id
    assert (trace_id, root.span_id) in batch.links
    assert batch.attributes["serve.batch.size"] == 1
    assert wait.links == [(trace_id, batch.span_id)]
    assert wait.end_ns <= batch.start_ns + 1_000_000  # the wait ends when its batch begins
    # The access line names the trace beside the request id.
    records = wait_for(
        lambda: [a for a in stack.server.access_records() if a.get("request_id") == r.headers["X-Request-ID"]],
        10, "the access line",
    )
    assert records[0]["trace_id"] == trace_id


def test_one_batch_span_links_every_request_it_served(stack, receiver):
    traces = [ids() for _ in range(16)]

    def send(pair: tuple[str, str]) -> int:
        headers = {"traceparent": traceparent(*pair), "Connection": "close"}
        body = {"inputs": [f"{SECRETS[1]} {pair[0][:6]}"]}  # distinct texts: no cache hits
        return requests.post(stack.url + "/v1/models/sentiment/predict", json=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(send, traces)) == [200] * 16
    wanted = {t for t, _ in traces}

    def batches() -> list[ReceivedSpan]:
        waits = [s for t in wanted for s in by_name(receiver.trace(t), "queue wait")]
        if len(waits) < 16:
            return []
        linked = {span_id for w in waits for _, span_id in w.links}
        found = [s for s in receiver.spans if s.name == "model sentiment" and s.span_id in linked]
        return found if len(found) == len(linked) else []

    found = receiver.wait(batches, what="the batch spans of 16 concurrent requests")
    # Every request is linked from exactly one batch, and a batch's size is its requests' inputs.
    links = [link for batch in found for link in batch.links]
    assert sorted(t for t, _ in links) == sorted(wanted)
    assert max(len(batch.links) for batch in found) >= 2  # concurrent requests shared a model call
    for batch in found:
        assert batch.attributes["serve.batch.size"] == len(batch.links)
        assert batch.parent_span_id in {span_id for _, span_id in batch.links}
        requests_of_batch = {t for t, _ in batch.links}
        assert batch.trace_id in requests_of_batch


def test_an_unsampled_request_sends_no_span_and_still_logs_its_trace_id(stack, receiver):
    trace_id, parent = ids()
    r = requests.post(
        stack.url + "/v1/models/sentiment/predict",
        json={"inputs": [SECRETS[2]]},
        headers={"traceparent": traceparent(trace_id, parent, sampled=False)},
        timeout=30,
    )
    assert r.status_code == 200
    records = wait_for(
        lambda: [a for a in stack.server.access_records() if a.get("request_id") == r.headers["X-Request-ID"]],
        10, "the access line",
    )
    assert records[0]["trace_id"] == trace_id
    # A sampled request sent after it is exported; by then the unsampled one would have been too.
    later, span_id = ids()
    requests.get(stack.url + "/healthz", headers={"traceparent": traceparent(later, span_id)}, timeout=10)
    receiver.wait(lambda: receiver.trace(later), what="the later request's span")
    assert receiver.trace(trace_id) == []


def test_a_job_is_one_trace_from_the_submitting_request_to_the_worker(stack, receiver):
    trace_id, parent = ids()
    r = requests.post(
        stack.url + "/v1/jobs",
        json={"model": "sentiment", "inputs": [SECRETS[0], SECRETS[1]], "parameters": {}},
        headers={"traceparent": traceparent(trace_id, parent)},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_for(
        lambda: requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "succeeded",
        120, "the job",
    )
    names = {"POST /v1/jobs", "job submit", "job queued", "job run", "job batch", "model sentiment", "job done"}
    spans = receiver.wait(
        lambda: (found := receiver.trace(trace_id)) and names <= {s.name for s in found} and found,
        what=f"the job's spans {sorted(names)}",
    )
    (post,) = by_name(spans, "POST /v1/jobs")
    (submit,) = by_name(spans, "job submit")
    (queued,) = by_name(spans, "job queued")
    (run,) = by_name(spans, "job run")
    (batch,) = by_name(spans, "job batch")
    (model,) = by_name(spans, "model sentiment")
    (done,) = by_name(spans, "job done")
    assert post.parent_span_id == parent
    assert submit.parent_span_id == post.span_id and submit.kind == PRODUCER
    assert submit.attributes["serve.job.id"] == job_id
    # The worker's spans hang under the submission, from another process.
    assert queued.parent_span_id == submit.span_id and run.parent_span_id == submit.span_id
    assert run.kind == CONSUMER
    assert run.attributes["serve.job.id"] == job_id and run.attributes["serve.job.status"] == "succeeded"
    assert batch.parent_span_id == run.span_id and batch.attributes["serve.batch.size"] == 2
    assert model.parent_span_id == batch.span_id and model.attributes["serve.batch.size"] == 2
    assert done.parent_span_id == run.span_id
    assert queued.end_ns <= run.start_ns + 50_000_000
    assert post.resource["serve.role"] == "web" and run.resource["serve.role"] == "jobs"
    assert post.resource["process.pid"] != run.resource["process.pid"]


def test_no_span_carries_input_text(stack, receiver):
    # After the tests above sent every secret, as a prediction and as a job.
    assert receiver.spans
    for span in receiver.spans:
        for text in span.strings():
            assert not any(secret.split()[0] in text for secret in SECRETS), (span.name, text)


def test_openmetrics_scrapes_carry_the_trace_of_a_sampled_request(stack, receiver):
    sent = set()
    for _ in range(6):  # new connections: both workers answer some
        trace_id, parent = ids()
        sent.add(trace_id)
        r = requests.get(stack.url + "/healthz", headers={"traceparent": traceparent(trace_id, parent),
                                                           "Connection": "close"}, timeout=10)
        assert r.status_code == 200

    def exemplars() -> dict[str, set[str]]:
        r = requests.get(stack.url + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        found: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.exemplar is not None:
                    found.setdefault(family.name, set()).add(sample.exemplar.labels["trace_id"])
        return found

    found = receiver.wait(
        lambda: (got := exemplars()) and got.get("serve_http_request_duration_seconds", set()) & sent and got,
        what="an exemplar of the requests sent",
    )
    assert "serve_http_inference_duration_seconds" in found  # the batches' spans
    # Every exemplar names a trace that was sampled and so reaches the receiver.
    receiver.wait(
        lambda: found["serve_http_request_duration_seconds"] <= {s.trace_id for s in receiver.spans},
        what="the exemplars' traces",
    )
    # The Prometheus text format has no exemplars.
    plain = requests.get(stack.url + "/metrics", timeout=10)
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "trace_id" not in plain.text
