"""The seed systems' routes through the Flask test client: the forecast
service's /info and /forecast in their envelope, /recommendation, the
scheduled runs on /metrics, and the cross-origin headers."""

from __future__ import annotations

import shutil
import time

import pytest
from huey import SqliteHuey

from jobs.forecasts import SqliteForecasts
from jobs.periodic import chain_key, token_key
from jobs.queue import QUEUE_NAME
from predict import ModelRegistry
from serve_http import create_app
from serving.settings import REPO_ROOT, Settings
from tests.unit.test_ensemble import write_ensemble


@pytest.fixture(scope="module")
def seed_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed-models")
    for name in ("streamflow", "sentiment"):
        if not (REPO_ROOT / "models" / name / "model.yaml").is_file():
            pytest.fail(f"models/{name} is missing: run `make models`")
        shutil.copytree(REPO_ROOT / "models" / name, root / name)
    write_ensemble(root, "fusion", [{"model": "sentiment"}], combine="vote")
    registry = ModelRegistry(root)
    registry.load_all()
    return registry


def seed_app(registry, tmp_path, **settings):
    config = Settings(_env_file=None, cache_backend="none", jobs_dir=tmp_path / "jobs",
                      recommendation_ensemble="fusion", **settings)
    return create_app(config, registry=registry)


@pytest.fixture
def client(seed_registry, tmp_path):
    return seed_app(seed_registry, tmp_path).test_client()


def test_info_keeps_its_keys_and_lists_the_sites_in_the_seeds_envelope(client):
    info = client.get("/info").get_json()
    assert {"name", "version", "models", "default_classifier", "default_detector", "process"} <= set(info)
    assert info["success"] is True and info["message"] == "Success."
    assert info["data"]["model"] == "streamflow"
    assert [s["id"] for s in info["data"]["sites"]] == ["09447000", "1160815"]
    assert info["data"]["sites"][1] == {
        "id": "1160815", "name": "GRDC 1160815", "latitude": -28.4, "longitude": 30.0, "area": 659.0, "elevation": None
    }


@pytest.mark.parametrize("site", ["09447000", "1160815"])
def test_forecast_answers_the_models_own_values_in_the_envelope(client, site):
    r = client.get(f"/forecast?site_id={site}&forecast_days=5")
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    body = r.get_json()
    assert (body["success"], body["message"]) == (True, "Success.")
    data = body["data"]
    assert (data["site_id"], data["forecast_days"], data["model"]) == (site, 5, "streamflow")
    model = client.post("/v1/models/streamflow/predict", json={"inputs": [{"series": site, "horizon": 5}]}).get_json()
    expected = [{"time": s["time"], "flow": s["value"], "lower": s["lower"], "upper": s["upper"]}
                for s in model["outputs"][0]["forecast"]]
    assert data["forecast"] == expected


def test_forecast_is_a_read_of_the_stored_forecast(seed_registry, tmp_path):
    client = seed_app(seed_registry, tmp_path).test_client()
    revision = seed_registry.get("streamflow").revision
    stored = {"series": "09447000", "forecast": [{"time": f"2011-01-0{d}", "value": float(d), "lower": 0.0, "upper": 9.0}
                                                  for d in range(1, 8)]}
    SqliteForecasts(tmp_path / "jobs" / "forecasts.db").put("streamflow", revision, "09447000", stored, 1_700_000_000.0)
    data = client.get("/forecast?site_id=09447000&forecast_days=3").get_json()["data"]
    assert [p["flow"] for p in data["forecast"]] == [1.0, 2.0, 3.0]
    assert data["computed_at"] == "2023-11-14T22:13:20+00:00"


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [("site_id=10251335&forecast_days=5", 404, "site_id"),
     ("site_id=09447000&forecast_days=15", 422, "forecast_days"),
     ("site_id=09447000&forecast_days=0", 422, "forecast_days"),
     ("site_id=09447000&forecast_days=five", 422, "forecast_days"),
     ("site_id=09447000", 422, "forecast_days"),
     ("forecast_days=5", 422, "site_id")],
)
def test_forecast_errors_are_in_the_envelope_with_the_right_status(client, query, status, field):
    r = client.get(f"/forecast?{query}")
    assert r.status_code == status
    body = r.get_json()
    assert body["success"] is False and body["data"] is None
    assert field in body["message"]
    assert body["error"]["request_id"] == r.headers["X-Request-ID"]
    assert "Traceback" not in r.get_data(as_text=True)


def test_a_missing_key_is_a_401_in_the_envelope(seed_registry, tmp_path):
    client = seed_app(seed_registry, tmp_path, api_keys=["s3cret"]).test_client()
    r = client.get("/forecast?site_id=09447000&forecast_days=2")
    assert r.status_code == 401 and r.get_json()["success"] is False
    assert client.get("/forecast?site_id=09447000&forecast_days=2", headers={"X-Api-Token": "s3cret"}).status_code == 200


def test_cross_origin_headers_answer_the_seed_routes_only_unless_set(seed_registry, tmp_path):
    client = seed_app(seed_registry, tmp_path).test_client()
    preflight = client.options("/forecast", headers={"Origin": "https://map.example", "Access-Control-Request-Method": "GET"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Origin" not in client.get("/v1/models", headers={"Origin": "https://x.example"}).headers
    strict = seed_app(seed_registry, tmp_path, cors_origins=["https://app.example"]).test_client()
    r = strict.get("/forecast?site_id=09447000&forecast_days=1", headers={"Origin": "https://other.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_recommendation_answers_the_ensemble_in_the_seeds_shape(client):
    one = client.post("/recommendation", json={"input": "a warm, funny film"})
    assert one.status_code == 200
    direct = client.post("/v1/models/fusion/predict", json={"inputs": ["a warm, funny film"]}).get_json()["outputs"][0]
    assert one.get_json() == {"result": direct}
    many = client.post("/recommendation", json={"inputs": ["a warm, funny film", "dull"]}).get_json()
    assert len(many["result"]) == 2 and many["result"][0] == direct
    for bad in ({}, {"input": "x", "inputs": ["y"]}, {"inputs": []}, {"input": 5}):
        r = client.post("/recommendation", json=bad)
        assert r.status_code == 422, bad
        assert r.get_json()["error"]["code"] == "validation_failed"


def test_metrics_report_the_job_workers_scheduled_runs(client, tmp_path):
    (tmp_path / "jobs").mkdir(exist_ok=True)
    huey = SqliteHuey(QUEUE_NAME, filename=str(tmp_path / "jobs" / "queue.db"), results=False)
    # A chain's state as the job worker writes it (jobs/periodic.py).
    huey.put(token_key("forecasts"), {"token": "t", "schedule": "rate 1h"})
    huey.put(chain_key("forecasts", "t"), {"state": "due", "at": time.time(), "runs": {"ok": 7, "failed": 2},
                                           "last": {"ok": 1_700_000_000.0}})
    body = client.get("/metrics").get_data(as_text=True)
    assert 'serve_http_scheduled_runs_total{outcome="ok",task="forecasts"} 7.0' in body
    assert 'serve_http_scheduled_runs_total{outcome="failed",task="forecasts"} 2.0' in body
    assert 'serve_http_scheduled_last_run_timestamp_seconds{outcome="ok",task="forecasts"} 1.7e+09' in body
