"""Text to image through the Flask test client: the FastAPI book's routes and
``/v1/jobs``, each job run in-process by the JobRunner a worker process uses,
on the tiny pipeline of random weights (models/tiny-diffusion)."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from api.generated_images import NOT_YET
from api.jobs import JOBS_EXTENSION
from jobs.runner import JobRunner
from predict import ModelRegistry, Predictor
from serve_http import create_app
from serving.settings import REPO_ROOT, Settings

TINY = REPO_ROOT / "models" / "tiny-diffusion"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    if not (TINY / "pipeline" / "model_index.json").is_file():
        pytest.fail("models/tiny-diffusion/pipeline is missing: run `make models` first")
    root = tmp_path_factory.mktemp("t2i-models")
    shutil.copytree(TINY, root / "tiny-diffusion")
    return root


@pytest.fixture(scope="module")
def worker_predictor(repo) -> Predictor:
    """What a job worker computes with: the pipeline's weights loaded."""
    registry = ModelRegistry(repo, runs_jobs=True)
    registry.load_all()
    return Predictor(registry, batching=False)


@pytest.fixture
def app(repo, tmp_path):
    settings = Settings(_env_file=None, model_repository=repo, cache_backend="memory", jobs_dir=tmp_path / "jobs")
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


class Worker:
    """Runs a queued job as a worker process does; ``on_step(steps)`` runs at
    each saved step (after the save), as a client polling meanwhile would."""

    def __init__(self, app, predictor: Predictor) -> None:
        self.backends = app.extensions[JOBS_EXTENSION].backends
        self.predictor = predictor
        self.steps: list[int] = []
        self.on_step = None

    def run(self, job_id: str) -> None:
        store = self.backends.store
        save = store.progress

        def progress(job, shard, attempt, done, computed, steps=0):
            saved = save(job, shard, attempt, done, computed, steps)
            self.steps.append(steps)
            if self.on_step is not None:
                self.on_step(steps)
            return saved and store.get(job).status == "running"

        store.progress = progress
        try:
            runner = JobRunner(store, self.backends.results, self.predictor, heartbeat_s=5,
                               requeue=self.backends.queue.enqueue)
            for shard in range(store.get(job_id).shards):  # an image per shard; the last one joins
                runner(job_id, shard)
        finally:
            store.progress = save


@pytest.fixture
def worker(app, worker_predictor) -> Worker:
    return Worker(app, worker_predictor)


def test_the_books_routes_make_a_row_whose_progress_rises_then_give_the_image_url(client, worker):
    r = client.post("/generated-images", json={"prompt": "a sunset over a beach"})
    assert r.status_code == 201, r.get_json()
    row = r.get_json()
    assert isinstance(row["id"], int) and row["id"] >= 1
    assert r.headers["Location"] == f"/generated-images/{row['id']}"
    assert {k: row[k] for k in ("progress", "prompt", "negative_prompt", "num_steps", "file_name", "status")} == {
        "progress": 0, "prompt": "a sunset over a beach", "negative_prompt": None, "num_steps": 20,
        "file_name": None, "status": "queued"}
    assert row["created_at"].endswith("Z")
    assert client.get(f"/generated-images/{row['id']}").get_json() == row
    early = client.get(f"/generated-images/{row['id']}/url")
    assert early.status_code == 400
    assert early.get_json()["error"]["message"] == NOT_YET and early.get_json()["error"]["code"] == "not_available_yet"

    seen = {}
    worker.on_step = lambda steps: seen.setdefault(steps, client.get(f"/generated-images/{row['id']}").get_json())
    worker.run(row["job_id"])
    assert worker.steps == sorted(worker.steps) and worker.steps[0] == 0 and worker.steps[-1] == 20
    assert len(set(worker.steps)) >= 3  # steps are saved while the pipeline runs, not only at its end
    middle = next(steps for steps in worker.steps if 0 < steps < 20)
    assert seen[middle]["progress"] == middle * 100 // 20 and seen[middle]["status"] == "running"
    assert seen[middle]["file_name"] is None

    done = client.get(f"/generated-images/{row['id']}").get_json()
    assert done["progress"] == 100 and done["status"] == "succeeded"
    assert done["file_name"] == f"{row['job_id']}/files/00000000.png"
    url = client.get(f"/generated-images/{row['id']}/url")
    assert url.status_code == 200
    assert url.get_json() == {"url": f"http://localhost/v1/jobs/{row['job_id']}/files/00000000.png"}
    image = client.get(url.get_json()["url"].removeprefix("http://localhost"))
    assert image.status_code == 200 and image.mimetype == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (64, 64)


def test_the_simpler_route_answers_202_with_the_task_id_of_a_job(client, worker):
    r = client.post("/image-generation", json={"prompt": "a lighthouse", "negative_prompt": "fog", "num_steps": 4,
                                               "seed": 3, "width": 32, "height": 48})
    assert r.status_code == 202 and set(r.get_json()) == {"task_id"}
    task_id = r.get_json()["task_id"]
    assert r.headers["Location"] == f"/v1/jobs/{task_id}"
    job = client.get(f"/v1/jobs/{task_id}").get_json()
    assert job["model"] == "tiny-diffusion" and job["progress"]["steps_total"] == 4
    worker.run(task_id)
    job = client.get(f"/v1/jobs/{task_id}").get_json()
    assert job["status"] == "succeeded" and job["progress"]["steps_done"] == 4 and job["progress"]["percent"] == 100
    (line,) = [json.loads(x) for x in client.get(f"/v1/jobs/{task_id}/result").get_data(as_text=True).splitlines()]
    assert line == {"index": 0, "file": "00000000.png", "output": {
        "width": 32, "height": 48, "seed": 3, "num_steps": 4, "guidance_scale": 7.5, "media_type": "image/png"}}
    png = client.get(f"/v1/jobs/{task_id}/files/00000000.png").data
    assert Image.open(io.BytesIO(png)).size == (32, 48)


@pytest.mark.parametrize("body, field", [
    ({"prompt": "a cat", "num_steps": 0}, "num_steps"),
    ({"prompt": "a cat", "num_steps": 51}, "num_steps"),
    ({"prompt": "a cat", "num_steps": "20"}, "num_steps"),
    ({"negative_prompt": "dogs"}, "prompt"),
    ({"prompt": "a cat", "width": 100}, "width"),
])
def test_a_bad_request_is_a_422_naming_the_field_and_makes_no_row(client, body, field):
    r = client.post("/generated-images", json=body)
    assert r.status_code == 422
    assert field in {detail["field"] for detail in r.get_json()["error"]["details"]}
    assert client.post("/image-generation", json=body).status_code == 422
    assert client.get("/generated-images/1").status_code == 404  # nothing was made


def test_an_unknown_row_is_a_404(client):
    for path in ("/generated-images/999", "/generated-images/999/url"):
        r = client.get(path)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "job_not_found"


def test_a_cancelled_generation_stops_between_steps_and_never_has_an_image(client, worker):
    row = client.post("/generated-images", json={"prompt": "a storm", "num_steps": 30}).get_json()

    def cancel_at_five(steps: int) -> None:
        if steps >= 5 and client.get(f"/v1/jobs/{row['job_id']}").get_json()["status"] == "running":
            assert client.delete(f"/v1/jobs/{row['job_id']}").status_code == 200

    worker.on_step = cancel_at_five
    worker.run(row["job_id"])
    assert 5 <= worker.steps[-1] < 30  # it stopped at the first step after the cancel
    job = client.get(f"/v1/jobs/{row['job_id']}").get_json()
    assert job["status"] == "cancelled" and job["progress"]["steps_done"] < 30
    url = client.get(f"/generated-images/{row['id']}/url")
    assert url.status_code == 400 and "cancelled" in url.get_json()["error"]["message"]
    assert client.get(f"/v1/jobs/{row['job_id']}/files/00000000.png").status_code == 404


def test_a_job_of_several_prompts_stores_an_image_per_input_and_a_seed_repeats_its_bytes(client, worker):
    inputs = [{"prompt": "a red cube", "seed": 5, "num_steps": 3}, "a blue sphere",
              {"prompt": "a red cube", "seed": 5, "num_steps": 3}]
    r = client.post("/v1/jobs", json={"model": "tiny-diffusion", "inputs": inputs})
    assert r.status_code == 202
    job = r.get_json()
    assert job["progress"]["steps_total"] == 3 + 20 + 3
    worker.run(job["id"])
    lines = [json.loads(x) for x in client.get(f"/v1/jobs/{job['id']}/result").get_data(as_text=True).splitlines()]
    assert [line["file"] for line in lines] == ["00000000.png", "00000001.png", "00000002.png"]
    files = [client.get(f"/v1/jobs/{job['id']}/files/{line['file']}").data for line in lines]
    assert files[0] == files[2] != files[1]
    assert lines[1]["output"]["seed"] != 5 and lines[1]["output"]["num_steps"] == 20


def test_no_synchronous_route_computes_an_image(client):
    r = client.post("/v1/models/tiny-diffusion/predict", json={"inputs": ["a cat"]})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "jobs_only"
    assert "POST /v1/jobs" in r.get_json()["error"]["message"]
    v2 = client.post("/v2/models/tiny-diffusion/infer", json={"inputs": [
        {"name": "input", "shape": [1], "datatype": "BYTES", "data": ['"a cat"']}]})
    # The V2 protocol's error body: {"error": message}.
    assert v2.status_code == 422 and "runs only as a background job" in v2.get_json()["error"]
    listed = {m["name"]: m for m in client.get("/v1/models").get_json()["models"]}
    assert listed["tiny-diffusion"]["task"] == "text-to-image" and listed["tiny-diffusion"]["ready"]
    assert "RANDOM weights" in listed["tiny-diffusion"]["description"]
