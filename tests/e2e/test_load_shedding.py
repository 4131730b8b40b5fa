"""The gthread worker's bounded backlog (serving/worker.py) against a real Gunicorn."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer
from tests.faulty_adapter import write_faulty_model_folder

pytestmark = pytest.mark.e2e


def test_a_full_backlog_answers_503_at_once_and_the_admitted_requests_still_finish(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models" / "sentiment", repo / "sentiment")
    write_faulty_model_folder(repo)
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "WORKERS": "1", "THREADS": "1", "SERVE_WORKER_BACKLOG": "2"}
    with GunicornServer(tmp_path, env=env) as server:

        def classify(text: str, rid: str) -> tuple[requests.Response, float]:
            started = time.monotonic()
            r = requests.post(server.url + "/v1/classify", json={"text": text, "model": "faulty"},
                              headers={"X-Request-ID": rid, "Connection": "close"}, timeout=60)
            return r, time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            # The worker's one thread is held inside the model until the gate opens.
            holder = pool.submit(classify, f"gate:{gate}", "holder")
            deadline = time.monotonic() + 30
            while not (gate / "entered").exists():
                assert time.monotonic() < deadline and not holder.done(), "the model never started"
                time.sleep(0.01)  # polling a condition, bounded by the deadline
            others = [pool.submit(classify, "a short text", f"extra-{i}") for i in range(6)]
            # While the gate is shut nothing admitted can finish: whatever answers now was shed.
            early: list[tuple[requests.Response, float]] = []
            deadline = time.monotonic() + 30
            while len(early) < 4:
                assert time.monotonic() < deadline, f"only {len(early)} answered while the thread was busy"
                early = [f.result() for f in others if f.done()]
                time.sleep(0.01)  # polling a condition, bounded by the deadline
            assert len(early) == 4
            (gate / "release").touch()
            answers = [f.result(timeout=60) for f in others]
            held, _ = holder.result(timeout=60)

        assert held.status_code == 200
        statuses = sorted(r.status_code for r, _ in answers)
        assert statuses == [200, 200, 503, 503, 503, 503]
        for r, seconds in early:
            assert r.status_code == 503
            assert r.headers["Retry-After"] == "1"
            assert r.headers["Connection"] == "close"
            error = r.json()["error"]
            assert error["code"] == "overloaded"
            assert error["details"] == {"waiting": 2, "limit": 2}
            assert error["request_id"] == r.headers["X-Request-ID"]
            assert r.headers["X-Request-ID"].startswith("extra-")
        print(f"\nshed 4 of 6 while the thread was busy; slowest 503 in {max(s for _, s in early) * 1000:.0f} ms")

        # The worker is healthy afterwards, and the metrics count the shed requests.
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        assert 'serve_http_rejected_requests_total{reason="overloaded",route="<worker backlog>"} 4.0' in metrics
