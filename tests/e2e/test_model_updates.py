"""Live model updates under a real Gunicorn: the V2 repository extension
(load, unload, index; also through tritonclient) and SIGHUP, with no restart.

The fault test replaces ``sentiment`` by a retrained version while a second
process keeps 8 client threads busy on kept-alive connections: no request
fails, every request that starts after the load call has answered gets the
new version, and the weights stay shared (total PSS of master and workers).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

from bench.procs import pss_mb
from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer
from tests.e2e.test_faults import Load, failed, show

pytestmark = pytest.mark.e2e

REVIEW = {"inputs": ["a warm, funny, beautifully acted film"]}
SETOSA = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}


def bump_version(folder, version: str) -> None:
    manifest = folder / "model.yaml"
    lines = [line for line in manifest.read_text().splitlines() if not line.startswith("version:")]
    manifest.write_text("\n".join(lines + [f'version: "{version}"']) + "\n")


def retrain_sentiment(folder, seed: int) -> None:
    """A new version of the sentiment model: another split, same recipe (writes atomically)."""
    done = subprocess.run(
        [sys.executable, "training/train_text_classifier.py", "--out", str(folder), "--seed", str(seed)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("updates")
    repository = tmp / "models"
    for name in ("sentiment", "faces"):
        shutil.copytree(REPO_ROOT / "models" / name, repository / name, ignore=shutil.ignore_patterns("__pycache__"))
    # minilm makes the PSS figure one of real shared weights (90 MB of torch tensors).
    shutil.copytree(REPO_ROOT / "models" / "minilm", repository / "minilm")
    env = {"SERVE_MODEL_REPOSITORY": str(repository), "WORKERS": "2"}
    with GunicornServer(tmp, env=env) as server:
        server.repository = repository
        yield server


def predict(server, model="sentiment", body=REVIEW) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{model}/predict", json=body, timeout=30)


def pss(server) -> float:
    return pss_mb([server.pid, *server.worker_pids()])


def test_a_retrained_model_replaces_the_old_under_load_with_no_failed_request(server, tmp_path, capsys):
    for _ in range(20):  # every worker has run the models once: PSS after warm-up
        assert predict(server).status_code == 200
        assert predict(server, "minilm").status_code == 200
    pss_before = pss(server)
    retrain_sentiment(server.repository / "sentiment", seed=1)
    bump_version(server.repository / "sentiment", "2")
    load = Load(tmp_path, server.url, "/v1/models/sentiment/predict", REVIEW, concurrency=8, keep_alive=True, field="version")
    try:
        server.wait_for(lambda: server.access_count("/v1/models/sentiment/predict") >= 200, 60, "load under way")
        old_workers = server.worker_pids()
        asked = time.monotonic()
        answer = requests.post(f"{server.url}/v2/repository/models/sentiment/load", timeout=120)
        answered = time.monotonic()
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"name": "sentiment", "message": "loaded sentiment"}
        served_before = server.access_count("/v1/models/sentiment/predict")
        server.wait_for(lambda: server.access_count("/v1/models/sentiment/predict") >= served_before + 300, 60, "load after the update")
    finally:
        records = load.finish()
    # Every worker is replaced; the one that answered the call leaves last,
    # once its kept-alive connections have lingered (Gunicorn's 2 s).
    server.wait_for(lambda: not server.worker_pids() & old_workers, 30, "old workers gone")
    assert len(server.worker_pids()) == 2
    for _ in range(20):
        assert predict(server, "minilm").status_code == 200
    pss_after = pss(server)
    after = [r for r in records if r["start"] > answered]
    versions_after = {r["field"] for r in after}
    during = [r for r in records if asked <= r["start"] <= answered]
    show(capsys, "model update", sent=len(records), failed=len(failed(records)), during_call=len(during),
         after_call=len(after), versions_after=sorted(versions_after), call_s=round(answered - asked, 2),
         pss_before_mb=round(pss_before), pss_after_mb=round(pss_after))
    assert failed(records) == []
    assert len(after) >= 100 and versions_after == {"2"}
    assert {r["field"] for r in records if r["end"] < asked} == {"1"}
    assert abs(pss_after - pss_before) <= 0.10 * pss_before
    # The cache never answers for the new version with the old one's result.
    fresh = predict(server)
    assert fresh.json()["version"] == "2"
    assert requests.get(f"{server.url}/v1/models/sentiment", timeout=10).json()["version"] == "2"
    assert requests.get(f"{server.url}/v2/models/sentiment", timeout=10).json()["versions"] == ["2"]


def test_a_folder_that_does_not_load_leaves_the_old_version_serving(server):
    version = predict(server).json()["version"]
    broken = server.repository / "sentiment" / "model.joblib"
    original = broken.read_bytes()
    broken.write_bytes(b"not a model")
    try:
        answer = requests.post(f"{server.url}/v2/repository/models/sentiment/load", timeout=120)
    finally:
        broken.write_bytes(original)
    assert answer.status_code == 400
    assert "checksum mismatch for model.joblib" in answer.json()["error"] and "\n" not in answer.json()["error"]
    r = predict(server)
    assert r.status_code == 200 and r.json()["version"] == version


def test_the_repository_extension_through_tritonclient(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        index = {entry["name"]: entry for entry in client.get_model_repository_index()}
        assert {"sentiment", "faces", "minilm"} <= set(index) and index["faces"]["state"] == "READY"
        client.unload_model("faces")
        assert not client.is_model_ready("faces")
        entry = next(e for e in client.get_model_repository_index() if e["name"] == "faces")
        assert (entry["state"], entry["reason"]) == ("UNAVAILABLE", "unloaded")
        assert predict(server, "faces", {"inputs": ["AA=="]}).status_code == 404
        client.load_model("faces")
        assert client.is_model_ready("faces")
        with pytest.raises(InferenceServerException, match="no model folder"):
            client.load_model("nope")
    finally:
        client.close()


def test_sighup_reads_the_repository_again(server):
    shutil.copytree(REPO_ROOT / "models" / "iris", server.repository / "iris", ignore=shutil.ignore_patterns("__pycache__"))
    assert predict(server, "iris", {"inputs": [SETOSA]}).status_code == 404
    old_workers = server.worker_pids()
    server.signal(signal.SIGHUP)
    server.wait_for(lambda: not server.worker_pids() & old_workers and len(server.worker_pids()) == 2, 60,
                    "workers replaced after SIGHUP")
    r = predict(server, "iris", {"inputs": [SETOSA]})
    assert r.status_code == 200 and r.json()["outputs"][0]["category"] == "setosa"
    assert "repository re-read" in server.log() and "'iris': 'loaded'" in server.log()
