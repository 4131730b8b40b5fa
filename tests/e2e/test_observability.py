"""Metrics, logs and health against a real Gunicorn with several workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer
from tests.faulty_adapter import write_faulty_model_folder

pytestmark = pytest.mark.e2e

KEY = "obs-secret-key-4f1d"


def scrape(server: GunicornServer) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    r = requests.get(server.url + "/metrics", headers={"X-Api-Token": KEY}, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("obs-models")
    shutil.copytree(REPO_ROOT / "models" / "sentiment", root / "sentiment")
    write_faulty_model_folder(root)
    return root


def classify(server: GunicornServer, text: str, model: str = "sentiment", rid: str | None = None) -> requests.Response:
    headers = {"X-Api-Token": KEY, "Connection": "close"}  # a new connection each: spread over workers
    if rid:
        headers["X-Request-ID"] = rid
    return requests.post(server.url + "/v1/classify", json={"text": text, "model": model}, headers=headers, timeout=30)


def test_counts_are_exact_across_five_workers_and_survive_a_killed_worker(repo, tmp_path):
    n = 300
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "WORKERS": "5", "THREADS": "2", "SERVE_API_KEYS": KEY}
    with GunicornServer(tmp_path, env=env) as server:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: classify(server, f"review number {i} was fine").status_code, range(n)))
        assert statuses == [200] * n
        answered_by = {line["pid"] for line in server.access_records() if line["route"] == "/v1/classify"}
        assert len(answered_by) >= 2, f"all requests went to {answered_by}"

        before = scrape(server)
        route = {"route": "/v1/classify"}
        assert value(before, "serve_http_requests_total", method="POST", status="2xx", **route) == n
        assert value(before, "serve_http_request_duration_seconds_count", method="POST", **route) == n
        # One text per request: the batch sizes add up to n, and every text was new.
        assert value(before, "serve_http_batch_size_sum", model="sentiment") == n
        assert value(before, "serve_http_cache_lookups_total", model="sentiment", result="miss") == n
        assert value(before, "serve_http_model_info", model="sentiment", version="1", adapter="sklearn",
                     task="text-classification") == 1
        assert value(before, "serve_http_requests_in_progress", **route) == 0

        victim = max(answered_by, key=lambda pid: sum(1 for l in server.access_records() if l["pid"] == pid))
        os.kill(victim, signal.SIGKILL)
        server.wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 5, 30, "a replacement worker")
        after = server.wait_for(lambda: (s := scrape(server)) and value(s, "serve_http_worker_exits_total") == 1 and s, 30,
                     "the master to count the exit")
        assert value(after, "serve_http_requests_total", method="POST", status="2xx", **route) == n
        assert value(after, "serve_http_request_duration_seconds_count", method="POST", **route) == n
        assert value(after, "serve_http_batch_size_sum", model="sentiment") == n
        assert not list((tmp_path / "metrics").glob(f"*_{victim}.db")), "the dead worker's files were folded"

        # SIGHUP re-reads gunicorn.conf.py and replaces every worker: the folder is not wiped again.
        old = server.worker_pids()
        server.signal(signal.SIGHUP)
        server.wait_for(lambda: len(server.worker_pids()) == 5 and not (server.worker_pids() & old), 60,
                        "five new workers after SIGHUP")
        reloaded = scrape(server)
        assert value(reloaded, "serve_http_requests_total", method="POST", status="2xx", **route) == n
        assert value(reloaded, "serve_http_model_info", model="sentiment", version="1", adapter="sklearn",
                     task="text-classification") == 1

        # KServe V2 health speaks for the same registry.
        assert requests.get(server.url + "/v2/health/ready", timeout=5).json() == {"ready": True}
        assert requests.get(server.url + "/v2/models/sentiment/ready", timeout=5).json() == {
            "name": "sentiment", "ready": True}


def test_recycled_workers_keep_counts_and_the_folder_bounded(repo, tmp_path):
    env = {
        "SERVE_MODEL_REPOSITORY": str(repo), "SERVE_MODELS": "sentiment", "WORKERS": "5", "THREADS": "2",
        "MAX_REQUESTS": "10", "SERVE_API_KEYS": KEY, "ACCESS_LOG": "",
    }
    n = 0
    with GunicornServer(tmp_path, env=env) as server:
        with ThreadPoolExecutor(4) as pool:
            while value(scrape(server), "serve_http_worker_exits_total") < 50:
                batch = list(pool.map(lambda i: classify(server, f"text {i}").status_code, range(n, n + 100)))
                assert batch == [200] * 100
                n += 100
        samples = scrape(server)
        exits = value(samples, "serve_http_worker_exits_total")
        print(f"\n{n} requests, {exits:.0f} worker exits, files: {sorted(p.name for p in (tmp_path / 'metrics').glob('*.db'))}")
        assert value(samples, "serve_http_requests_total", route="/v1/classify", method="POST", status="2xx") == n
        assert value(samples, "serve_http_request_duration_seconds_count", route="/v1/classify", method="POST") == n
        # Per live process at most one file per kind, plus the archive: not one set per worker ever started.
        files = list((tmp_path / "metrics").glob("*.db"))
        assert len(files) <= 6 * 4 + 2, sorted(p.name for p in files)


def test_request_id_in_access_line_and_error_lines_and_no_secrets(repo, tmp_path):
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "WORKERS": "2", "SERVE_API_KEYS": KEY}
    with GunicornServer(tmp_path, env=env) as server:
        r = classify(server, "this will boom", model="faulty", rid="trace-me-42")
        assert r.status_code == 500
        assert r.json()["error"] == {"code": "internal_error", "message": "internal server error",
                                     "details": [], "request_id": "trace-me-42"}
        assert "Traceback" not in r.text
        ok = classify(server, "a fine film", rid="trace-ok-7")
        assert ok.status_code == 200
        refused = requests.post(server.url + "/v1/classify", json={"text": "x"},
                                headers={"X-Api-Token": "wrong-" + KEY, "X-Request-ID": "trace-401"}, timeout=10)
        assert refused.status_code == 401

        access = server.wait_for(lambda: {l["request_id"]: l for l in server.access_records()
                               if l["request_id"] in ("trace-me-42", "trace-ok-7", "trace-401")}
                      if len({l["request_id"] for l in server.access_records()} & {"trace-me-42", "trace-ok-7", "trace-401"}) == 3
                      else None, 10, "three access lines")
        assert access["trace-me-42"]["status"] == 500
        assert access["trace-me-42"]["route"] == "/v1/classify"
        assert access["trace-ok-7"] | {"duration_ms": 0, "bytes": 0, "time": "", "pid": 0, "client": ""} == {
            "level": "INFO", "logger": "gunicorn.access", "pid": 0, "time": "", "message": "POST /v1/classify 200",
            "request_id": "trace-ok-7", "method": "POST", "route": "/v1/classify", "path": "/v1/classify",
            "status": 200, "duration_ms": 0, "bytes": 0, "client": "", "model": "sentiment", "batch_size": 1,
            "api_key": "key1",  # the bare key's name, never the key
        }
        assert access["trace-ok-7"]["client"] == "127.0.0.1"
        assert access["trace-ok-7"]["duration_ms"] > 0
        assert access["trace-401"]["status"] == 401

    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    errors = [rec for rec in records if rec["level"] == "ERROR"]
    mine = [rec for rec in errors if rec.get("request_id") == "trace-me-42"]
    assert len(mine) == 1, errors  # logged once, with its request id
    assert "RuntimeError: the faulty model exploded on purpose" in mine[0]["exc_info"]
    assert len(errors) == 1, errors
    everything = server.log() + server.access_log.read_text()
    assert KEY not in everything
    assert "this will boom" not in everything and "a fine film" not in everything
