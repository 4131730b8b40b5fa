"""/metrics, the KServe V2 health paths and the request-id log context, in one process."""

from __future__ import annotations

import yaml
from prometheus_client.parser import text_string_to_metric_families

from adapters.base import ModelAdapter
from api.metrics import route_label
from serving.settings import REPO_ROOT


def sample(client, name: str, **labels) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def test_metrics_count_requests_by_route_template_and_status_class(client):
    labels = {"route": "/v1/models/{name}/predict", "method": "POST", "status": "4xx"}
    before = sample(client, "serve_http_requests_total", **labels)
    assert client.post("/v1/models/nope/predict", json={"inputs": ["x"]}).status_code == 404
    assert client.post("/v1/models/also-nope/predict", json={"inputs": ["x"]}).status_code == 404
    assert sample(client, "serve_http_requests_total", **labels) == before + 2


def test_route_labels_are_the_openapi_paths_and_a_405_counts_under_its_route(client, app):
    document = yaml.safe_load((REPO_ROOT / "openapi.yml").read_text())
    labels = {route_label(rule.rule) for rule in app.url_map.iter_rules()}
    # Every documented path is the label of its route (no converter syntax
    # left), but the per-model operations, concrete paths of one route.
    concrete = set(document["paths"]) - labels
    adapter = app.url_map.bind("localhost")
    assert {route_label(adapter.match(path, method="POST", return_rule=True)[0].rule) for path in concrete} == {
        "/v1/models/{name}/predict"}
    assert "/v1/jobs/{job_id}/result" in labels and "/v2/models/{name}/versions/{version}/infer" in labels
    assert not [label for label in labels if "<" in label or ">" in label]

    job = "/v1/jobs/{job_id}"
    counted = {"route": job, "method": "GET", "status": "4xx"}
    wrong_method = {"route": "/v1/classify", "method": "GET", "status": "4xx"}
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "4xx"}
    before = [sample(client, "serve_http_requests_total", **labels) for labels in (counted, wrong_method, unmatched)]
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert client.get("/v1/classify").status_code == 405
    assert client.put("/v1/jobs/" + "0" * 32).status_code == 405
    assert client.get("/v1/no-such-route").status_code == 404
    after = [sample(client, "serve_http_requests_total", **labels) for labels in (counted, wrong_method, unmatched)]
    assert [b - a for a, b in zip(before, after)] == [1, 1, 1]
    assert sample(client, "serve_http_requests_total", route=job, method="PUT", status="4xx") >= 1


def test_metrics_see_batches_and_cache(client):
    hits = sample(client, "serve_http_cache_lookups_total", model="sentiment", result="hit")
    batches = sample(client, "serve_http_batch_size_count", model="sentiment")
    body = {"inputs": ["metrics test one", "metrics test two", "metrics test three"]}
    assert client.post("/v1/models/sentiment/predict", json=body).status_code == 200
    assert client.post("/v1/models/sentiment/predict", json=body).headers["X-Cache"] == "HIT"
    assert sample(client, "serve_http_cache_lookups_total", model="sentiment", result="hit") == hits + 3
    assert sample(client, "serve_http_batch_size_count", model="sentiment") == batches + 1  # the HIT computed nothing


def test_metrics_endpoint_is_prometheus_text(client):
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain; version=")
    assert "# TYPE serve_http_requests_total counter" in r.get_data(as_text=True)


def test_kserve_v2_health(client, registry):
    assert client.get("/v2/health/live").json == {"live": True}
    assert client.get("/v2/health/ready").json == {"ready": True}
    assert client.get("/v2/models/faces/ready").json == {"name": "faces", "ready": True}
    missing = client.get("/v2/models/nope/ready")
    assert missing.status_code == 404
    # The protocol's own error shape on its routes.
    assert missing.json == {"error": "no model named 'nope'"}
    assert client.get("/v2/models/faces/versions/1/ready").json == {"name": "faces", "ready": True}
    assert client.get("/v2/models/faces/versions/2/ready").status_code == 404


def test_kserve_v2_not_ready_is_400(client, registry):
    adapter: ModelAdapter = next(iter(registry))
    adapter.ready = False
    try:
        r = client.get(f"/v2/models/{adapter.name}/ready")
        assert (r.status_code, r.json) == (400, {"name": adapter.name, "ready": False})
        assert client.get("/v2/health/ready").status_code == 400
    finally:
        adapter.ready = True
