"""``SERVE_LOG_FORMAT=json``: every line Gunicorn and the job worker write is
one JSON object, from the first import to the last shutdown line, with the
repository's real models loaded (transformers, torch, OpenCV and all), and
when a start fails."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
import requests

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer, JobWorker
from tests.inputs import astronaut, encode

pytestmark = pytest.mark.e2e


def non_json_lines(output: str) -> list[str]:
    """The lines of ``output`` that are not a JSON object each."""
    bad = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(record, dict):
            bad.append(line)
    return bad


def test_every_line_of_server_and_job_worker_is_a_json_object(tmp_path):
    # The access log to stdout as well: the one stream holds every kind of line.
    env = {"SERVE_LOG_FORMAT": "json", "ACCESS_LOG": "-", "WORKERS": "2"}
    server = GunicornServer(tmp_path, env=env, ready_timeout=240)
    with server:
        worker = JobWorker(server)
        with worker:
            models = requests.get(server.url + "/v1/models", timeout=10).json()["models"]
            assert {"minilm", "imagenet", "sentiment"} <= {m["name"] for m in models}
            # Requests that run torch, transformers and scikit-learn in a worker, and errors.
            embedded = requests.post(server.url + "/v1/embeddings", json={"model": "minilm", "input": "a fine film"},
                                     timeout=60)
            assert embedded.status_code == 200, embedded.text
            image = requests.post(server.url + "/v1/models/imagenet/predict",
                                  json={"inputs": [base64.b64encode(encode(astronaut(), "PNG")).decode()]}, timeout=60)
            assert image.status_code == 200, image.text
            assert requests.get(server.url + "/v1/models/nope", timeout=10).status_code == 404
            submitted = requests.post(server.url + "/v1/jobs", json={"model": "sentiment", "inputs": ["good", "bad"]},
                                      timeout=10)
            assert submitted.status_code == 202, submitted.text
            job_url = server.url + submitted.headers["Location"]
            job = server.wait_for(lambda: (j := requests.get(job_url, timeout=5).json())["status"] in (
                "succeeded", "failed", "cancelled") and j, 120, "the job to finish")
            assert job["status"] == "succeeded", job
        assert worker.process.returncode == 0
    assert server.process.returncode == 0

    for name, output in (("gunicorn", server.log()), ("job worker", worker.log())):
        lines = output.splitlines()
        assert len(lines) > 10, f"{name} wrote only {lines}"
        assert non_json_lines(output) == [], f"{name} wrote lines that are not JSON objects"
    access = [json.loads(line) for line in server.log().splitlines() if '"gunicorn.access"' in line]
    assert {a["path"] for a in access} >= {"/readyz", "/v1/embeddings", "/v1/models/imagenet/predict"}
    loaded = [json.loads(line)["message"] for line in worker.log().splitlines() if "loaded model minilm (" in line]
    assert len(loaded) == 1


def test_a_start_that_fails_says_why_in_one_json_line(tmp_path):
    env = {"SERVE_LOG_FORMAT": "json", "SERVE_MODELS": "sentiment,no-such-model"}
    server = GunicornServer(tmp_path, env=env).start(wait_ready=False)
    try:
        assert server.wait_exit(timeout=120) != 0
    finally:
        server.stop()
    worker = subprocess.run([sys.executable, "-m", "jobs.worker"], cwd=REPO_ROOT, env=server.env,
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode != 0
    for name, output in (("gunicorn", server.log()), ("job worker", worker.stdout + worker.stderr)):
        assert non_json_lines(output) == [], f"{name} wrote lines that are not JSON objects"
        reasons = [json.loads(line) for line in output.splitlines() if "cannot start" in line]
        assert [(r["level"], "model 'no-such-model'" in r["message"]) for r in reasons] == [("CRITICAL", True)], output
