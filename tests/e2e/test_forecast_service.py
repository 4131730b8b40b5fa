"""The streamflow forecast service end to end: a real Gunicorn and a real job
worker whose scheduler recomputes every site's forecast every 2 s (fixed
rate) into the forecast table that ``GET /forecast`` reads."""

from __future__ import annotations

import json
import re

import pytest
import requests

from jobs.forecasts import SqliteForecasts
from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer, JobWorker, wait_for

pytestmark = pytest.mark.e2e

SITES = ["09447000", "1160815"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forecast")
    env = {
        "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
        "SERVE_MODELS": "streamflow",
        "SERVE_SCHEDULE_FORECASTS": "rate 2s",
        "SERVE_SCHEDULE_JOB_SWEEP": "delay 1s",
        "WORKERS": "2",
    }
    server = GunicornServer(tmp, env=env).start()
    worker = JobWorker(server).start()
    yield server, worker, SqliteForecasts(tmp / "jobs" / "forecasts.db")
    worker.stop()
    server.stop()


def test_info_lists_every_site_in_the_seeds_envelope(service):
    server, _, _ = service
    r = requests.get(f"{server.url}/info", timeout=10)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    body = r.json()
    assert (body["success"], body["message"]) == (True, "Success.")
    assert [site["id"] for site in body["data"]["sites"]] == SITES
    for site in body["data"]["sites"]:
        assert set(site) == {"id", "name", "latitude", "longitude", "area", "elevation"}
    assert body["name"] == "serve-http" and body["models"][0]["name"] == "streamflow"  # its own keys stay


@pytest.mark.parametrize("site", SITES)
def test_forecast_for_every_site_equals_the_models_own_output(service, site):
    server, _, _ = service
    for days in (1, 5, 14):
        r = requests.get(f"{server.url}/forecast", params={"site_id": site, "forecast_days": days}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["success"], body["message"]) == (True, "Success.")
        assert (body["data"]["site_id"], body["data"]["forecast_days"]) == (site, days)
        model = requests.post(f"{server.url}/v1/models/streamflow/predict",
                              json={"inputs": [{"series": site, "horizon": days}]}, timeout=10).json()
        steps = model["outputs"][0]["forecast"]
        assert [(p["time"], p["flow"], p["lower"], p["upper"]) for p in body["data"]["forecast"]] == [
            (s["time"], s["value"], s["lower"], s["upper"]) for s in steps
        ]
        assert len(steps) == days


@pytest.mark.parametrize(
    ("params", "status"),
    [({"site_id": "10251335", "forecast_days": 5}, 404), ({"site_id": SITES[0], "forecast_days": 15}, 422),
     ({"site_id": SITES[0], "forecast_days": 0}, 422), ({"site_id": SITES[0]}, 422), ({"forecast_days": 3}, 422)],
)
def test_forecast_errors_answer_the_envelope(service, params, status):
    server, _, _ = service
    r = requests.get(f"{server.url}/forecast", params=params, timeout=10)
    assert r.status_code == status
    body = r.json()
    assert body["success"] is False and body["data"] is None and body["message"]
    assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_the_scheduler_refreshes_the_forecast_table_and_counts_its_runs(service):
    server, worker, table = service
    revision = requests.get(f"{server.url}/v2/models/streamflow", timeout=10).json()  # served, ready
    assert revision["name"] == "streamflow"

    def stored_times():
        worker.check_alive()
        found = [table.get("streamflow", r, s) for s in SITES for r in _revisions(table)]
        times = [f[1] for f in found if f is not None]
        return times if len(times) == len(SITES) else None

    first = wait_for(stored_times, 60, "every site's forecast stored")
    # Two refreshes: every site's row rewritten later each time (rate 2s).
    later = wait_for(lambda: (t := stored_times()) and min(t) > max(first) and t, 30, "a refresh")
    wait_for(lambda: (t := stored_times()) and min(t) > max(later) and t, 30, "another refresh")
    # GET /forecast reads the table: its computed_at is a stored one, not the request's time.
    data = requests.get(f"{server.url}/forecast", params={"site_id": SITES[0], "forecast_days": 2}, timeout=10).json()["data"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", data["computed_at"])
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    ok = re.search(r'serve_http_scheduled_runs_total\{outcome="ok",task="forecasts"\} (\d+)', metrics)
    assert ok and int(ok[1]) >= 2
    assert re.search(r'serve_http_scheduled_runs_total\{outcome="ok",task="job-sweep"\} ([1-9]\d*)', metrics)
    assert "scheduled task forecasts: ok" in worker.log()


def _revisions(table: SqliteForecasts) -> list[str]:
    return [row[0] for row in table._conn.execute("select distinct revision from forecasts")]


def test_a_background_job_forecasts_many_sites(service):
    server, worker, _ = service
    inputs = [{"series": site, "horizon": h} for site in SITES for h in range(1, 15)]
    r = requests.post(f"{server.url}/v1/jobs", json={"model": "streamflow", "inputs": inputs}, timeout=10)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def finished():
        worker.check_alive()
        job = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] not in ("queued", "running") else None

    assert wait_for(finished, 60, "the forecast job")["status"] == "succeeded"
    lines = [json.loads(line) for line in requests.get(f"{server.url}/v1/jobs/{job_id}/result", timeout=10).text.splitlines()]
    direct = requests.post(f"{server.url}/v1/models/streamflow/predict", json={"inputs": inputs}, timeout=10).json()["outputs"]
    assert [line["output"] for line in lines] == direct
