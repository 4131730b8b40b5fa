"""The HTTP contract against a real Gunicorn with preloaded models."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.conftest import b64, jpeg_bytes
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

# Where the astronaut's face is in scikit-image's 512x512 photo.
FACE_REGION = (170, 60, 260, 170)


def overlap(box: dict, region: tuple) -> float:
    x1, y1, x2, y2 = region
    w = max(0.0, min(box["x2"], x2) - max(box["x1"], x1))
    h = max(0.0, min(box["y2"], y2) - max(box["y1"], y1))
    return w * h / ((x2 - x1) * (y2 - y1))


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn")
    with GunicornServer(
        tmp, env={"SERVE_MODEL_REPOSITORY": str(model_repo), "WORKERS": "3", "THREADS": "2"}
    ) as server:
        yield server


def test_every_worker_answers_a_torch_model(server, model_repo):
    """Three workers forked from a master that loaded torch weights each run a
    forward pass; a worker hung in OpenMP would time this out."""
    deadline = time.monotonic() + 90
    seen: set[str] = set()

    def call(i: int) -> int:
        # Distinct images, so no answer comes from the prediction cache.
        image = np.random.default_rng(i).integers(0, 255, (48 + i % 16, 64, 3), dtype=np.uint8)
        r = requests.post(
            f"{server.url}/v1/models/tiny-yolos/predict",
            json={"inputs": [b64(jpeg_bytes(image))]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["X-Cache"] == "MISS"
        return r.status_code

    with ThreadPoolExecutor(6) as pool:
        sent = 0
        while len(seen) < 3 and time.monotonic() < deadline:
            list(pool.map(call, range(sent, sent + 12)))
            sent += 12
            seen = {
                str(line["pid"])
                for line in server.access_records()
                if line["route"] == "/v1/models/{name}/predict" and line["status"] == 200
            }
    assert len(server.worker_pids()) == 3
    assert seen == {str(pid) for pid in server.worker_pids()}, f"workers that answered: {seen}"


def test_astronaut_has_one_face_through_seed_route(server, astronaut_jpeg):
    r = requests.post(
        server.url + "/",
        json={"requests": [{"image": {"content": b64(astronaut_jpeg)}, "features": [{"maxResults": 20}]}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    (response,) = r.json()["responses"]
    assert response["model"] == "faces"
    (face,) = response["objects"]
    assert face["label"] == "face"
    assert overlap(face["box"], FACE_REGION) > 0.5


def test_review_is_fresh(server):
    r = requests.post(server.url + "/prediction", json={"text": "a warm, funny, beautifully acted film"}, timeout=10)
    assert r.status_code == 200
    assert r.json() == {"category": "fresh"}


def test_ready_and_live(server):
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200
    assert {name: state["ready"] for name, state in ready.json()["models"].items()} == {
        "faces": True, "sentiment": True, "tiny-yolos": True
    }
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    seed_health = requests.get(server.url + "/healthCheck", timeout=5).json()
    assert seed_health == {"status": "ok", "success": True, "message": "Success.", "data": {"status": "ok"}}


@pytest.mark.parametrize(
    "path, kwargs, status, code",
    [
        ("/", {"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_input"),
        ("/", {"json": {"requests": [{"image": {"content": "@@@"}}]}}, 400, "invalid_input"),
        ("/", {"json": {"requests": []}}, 422, "validation_failed"),
        ("/", {"data": "text", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ("/prediction", {"json": {"txt": "typo"}}, 422, "validation_failed"),
        ("/v1/models/nope/predict", {"json": {"inputs": ["x"]}}, 404, "model_not_found"),
        ("/v1/classify", {"data": b"x" * (21 * 1024 * 1024), "headers": {"Content-Type": "application/json"}}, 413, "payload_too_large"),
    ],
)
def test_malformed_input_is_4xx_json(server, path, kwargs, status, code):
    r = requests.post(server.url + path, timeout=30, **kwargs)
    assert r.status_code == status
    assert r.headers["Content-Type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == r.headers["X-Request-ID"]
    assert "Traceback" not in r.text


def test_request_id_is_honoured(server):
    r = requests.get(server.url + "/healthz", headers={"X-Request-ID": "client-abc.123"}, timeout=5)
    assert r.headers["X-Request-ID"] == "client-abc.123"
    r = requests.get(server.url + "/nowhere", headers={"X-Request-ID": "bad id with spaces"}, timeout=5)
    assert r.status_code == 404
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    assert r.json()["error"]["request_id"] == r.headers["X-Request-ID"]


def test_disk_cache_is_shared_by_workers(server, chelsea_jpeg):
    body = {"requests": [{"image": {"content": b64(chelsea_jpeg)}, "features": [{"score_th": 0.05}]}]}
    first = requests.post(server.url + "/v1/detect", json=body, timeout=30)
    assert first.headers["X-Cache"] == "MISS"
    # Whichever worker takes the next requests, the answer is on disk already.
    for _ in range(6):
        again = requests.post(server.url + "/v1/detect", json=body, timeout=30)
        assert again.headers["X-Cache"] == "HIT"
        assert again.json() == first.json()
    assert requests.delete(server.url + "/v1/cache", timeout=10).json()["cleared"] >= 1
    assert requests.post(server.url + "/v1/detect", json=body, timeout=30).headers["X-Cache"] == "MISS"


def test_docs_are_served_locally(server):
    for page in ("/apidoc/swagger", "/apidoc/redoc"):
        html = requests.get(server.url + page, timeout=5).text
        assets = re.findall(r'(?:src|href|spec-url)="([^"]+)"', html)
        assert assets and all(a.startswith("/apidoc/") for a in assets), assets  # no CDN, no other host
        for asset in assets:
            assert requests.get(server.url + asset, timeout=5).status_code == 200
    spec = requests.get(server.url + "/apidoc/openapi.json", timeout=5).json()
    assert "/v1/detect" in spec["paths"]


def test_workers_times_compute_threads_fit_the_cores(server):
    """post_fork gives each of the 3 workers max(1, cores // 3) torch threads."""
    import os

    expected = max(1, (os.cpu_count() or 1) // 3)
    answers: dict[int, int] = {}
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(6) as pool:
        while len(answers) < 3 and time.monotonic() < deadline:
            for info in pool.map(lambda _: requests.get(server.url + "/info", timeout=10).json(), range(24)):
                answers[info["process"]["pid"]] = info["process"]["compute_threads"]
    assert set(answers) == server.worker_pids()
    assert set(answers.values()) == {expected}
    assert expected * len(answers) <= max(os.cpu_count() or 1, len(answers))
