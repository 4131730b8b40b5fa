"""Background jobs end to end: a real Gunicorn, a real job worker process, and
each backend's real servers (SQLite files; redis-server and an S3-compatible
moto server on loopback)."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from serving.settings import REPO_ROOT
from tests.conftest import b64, jpeg_bytes
from tests.e2e.server import GunicornServer, JobStack, JobWorker, free_port, wait_for

pytestmark = pytest.mark.e2e

BATCH = 2  # small batches: a 500-input job has 250 model calls
SHARD = 100  # and 5 shards, each saved on its own: the steps of progress to watch

ADJECTIVES = ["warm", "dull", "brilliant", "tedious", "moving", "clumsy", "sharp", "lifeless", "funny", "bland"]
NOUNS = ["film", "script", "cast", "ending", "score", "plot", "comedy", "thriller", "sequel", "debut"]


def texts(count: int, seed: int = 0) -> list[str]:
    """Distinct review-like texts (the index keeps every one unique)."""
    return [
        f"a {ADJECTIVES[(i + seed) % 10]} {NOUNS[(i * 7 + seed) % 10]}, "
        f"{ADJECTIVES[(i * 3 + seed) % 10]} from start to finish (#{seed}-{i})"
        for i in range(count)
    ]


class Stack(JobStack):
    def submit(self, inputs: list[str], model: str = "sentiment", shard_size: int | None = None,
               **headers: str) -> requests.Response:
        body = {"model": model, "inputs": inputs, **({"shard_size": shard_size} if shard_size else {})}
        return requests.post(f"{self.url}/v1/jobs", json=body, headers=headers, timeout=30)

    def job(self, job_id: str) -> dict:
        r = requests.get(f"{self.url}/v1/jobs/{job_id}", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until, what: str, timeout: float = 180) -> dict:
        def check():
            self.worker.check_alive()
            job = self.job(job_id)
            return job if until(job) else None

        return wait_for(check, timeout, f"job {job_id}: {what}", interval=0.02)

    def results(self, job_id: str) -> list[dict]:
        r = requests.get(f"{self.url}/v1/jobs/{job_id}/result", allow_redirects=False, timeout=60)
        if self.s3 is not None:
            # Results in object storage: a redirect to a pre-signed URL of the S3 server.
            assert r.status_code == 307, r.text
            assert r.headers["Location"].startswith(f"{self.s3.url}/{self.s3.bucket}/")
            assert "X-Amz-Signature=" in r.headers["Location"]
            r = requests.get(r.headers["Location"], timeout=60)
        assert r.status_code == 200, r.text
        if self.s3 is None:
            assert r.headers["Content-Type"] == "application/x-ndjson"
        return [json.loads(line) for line in r.text.splitlines()]

    def synchronous(self, inputs: list[str]) -> list[dict]:
        outputs = []
        for start in range(0, len(inputs), 64):
            r = requests.post(f"{self.url}/v1/models/sentiment/predict",
                              json={"inputs": inputs[start : start + 64]}, timeout=60)
            assert r.status_code == 200, r.text
            outputs += r.json()["outputs"]
        return outputs


@pytest.fixture(scope="module", params=["embedded", "redis+s3"])
def stack(request, tmp_path_factory):
    backend = request.param
    tmp = tmp_path_factory.mktemp(backend.replace("+", "-"))
    env = {
        "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
        "SERVE_MODELS": "sentiment,faces",
        "SERVE_JOB_BATCH_SIZE": str(BATCH),
        "SERVE_JOB_SHARD_SIZE": str(SHARD),
        "SERVE_JOB_HEARTBEAT_S": "0.5",
        "SERVE_JOB_VISIBILITY_TIMEOUT_S": "3",
        "WORKERS": "2",
        "SERVE_JOB_METRICS_PORT": str(free_port()),
    }
    with Stack.running(backend, tmp, env) as built:
        yield built


def test_500_texts_progress_rises_and_results_equal_the_synchronous_answers(stack):
    inputs = texts(500)
    r = stack.submit(inputs)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == {"done": 0, "total": 500, "steps_done": None, "steps_total": None, "percent": 0}

    seen: list[int] = []

    def finished(job: dict) -> bool:
        if job["status"] == "running":
            seen.append(job["progress"]["done"])
        return job["status"] not in ("queued", "running")

    final = stack.wait(job["id"], finished, "finish")
    assert final["status"] == "succeeded", final
    assert final["progress"] == {"done": 500, "total": 500, "steps_done": None, "steps_total": None, "percent": 100}
    assert final["attempts"] == 1 and final["computed"] == 500 and final["error"] is None
    assert final["started_at"] and final["finished_at"] >= final["started_at"]
    # Progress was watched rising: never backwards, several values on the way.
    assert seen == sorted(seen)
    assert len({done for done in seen if 0 < done < 500}) >= 2, seen

    lines = stack.results(job["id"])
    assert [line["index"] for line in lines] == list(range(500))
    assert [line["output"] for line in lines] == stack.synchronous(inputs)


def test_idempotency_key_returns_the_first_job_and_refuses_another_body(stack):
    key = f"retry-{stack.backend}"
    first = stack.submit(texts(3, seed=1), **{"Idempotency-Key": key})
    again = stack.submit(texts(3, seed=1), **{"Idempotency-Key": key})
    other = stack.submit(texts(4, seed=1), **{"Idempotency-Key": key})
    assert first.status_code == 202
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    stack.wait(first.json()["id"], lambda job: job["status"] == "succeeded", "succeed")


def test_cancel_a_running_job(stack):
    job_id = stack.submit(texts(2000, seed=2)).json()["id"]
    stack.wait(job_id, lambda job: job["status"] == "running" and job["progress"]["done"] > 0, "start")
    r = requests.delete(f"{stack.url}/v1/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"]
    # The one worker process takes the next job only once it let go of this one.
    follower = stack.submit(texts(4, seed=3)).json()["id"]
    stack.wait(follower, lambda job: job["status"] == "succeeded", "the next job")
    cancelled = stack.job(job_id)
    assert cancelled["status"] == "cancelled"
    assert 0 < cancelled["progress"]["done"] < 2000
    r = requests.get(f"{stack.url}/v1/jobs/{job_id}/result", timeout=30)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished"
    again = requests.delete(f"{stack.url}/v1/jobs/{job_id}", timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_stopped_worker_hands_its_job_back_at_once(stack):
    job_id = stack.submit(texts(1000, seed=5)).json()["id"]
    stack.wait(job_id, lambda job: job["status"] == "running" and job["progress"]["done"] > 0, "progress")
    assert stack.worker.stop() == 0  # SIGTERM: what `make serve`'s Ctrl-C and Docker send
    back = stack.job(job_id)
    assert back["status"] == "queued" and 0 < back["progress"]["done"] < 1000
    assert "handed back to the queue on shutdown" in stack.worker.log()
    stack.worker = JobWorker(stack.server, name="worker-after-stop").start()
    final = stack.wait(job_id, lambda job: job["status"] not in ("queued", "running"), "finish after restart")
    assert final["status"] == "succeeded" and final["attempts"] == 2
    assert final["computed"] <= 1000 + SHARD  # at most the shard in flight computed again


def test_a_killed_worker_leaves_the_job_to_the_next_one_without_recomputing(stack):
    inputs = texts(1000, seed=4)
    job_id = stack.submit(inputs).json()["id"]
    running = stack.wait(
        job_id, lambda job: job["status"] == "running" and job["progress"]["done"] >= 2 * SHARD, "progress"
    )
    stack.worker.kill()
    at_kill = stack.job(job_id)
    assert at_kill["status"] == "running" and at_kill["progress"]["done"] < 1000
    assert at_kill["progress"]["done"] >= running["progress"]["done"]

    stack.worker = JobWorker(stack.server, name="worker-2").start()
    final = stack.wait(job_id, lambda job: job["status"] not in ("queued", "running"), "finish after restart")
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2
    # Saved shards were not run again: at most the shard in flight at the kill.
    assert 1000 <= final["computed"] <= 1000 + SHARD < 1000 + at_kill["progress"]["done"]
    assert "stopped answering; queued again" in stack.worker.log()
    lines = stack.results(job_id)
    assert [line["index"] for line in lines] == list(range(1000))
    assert [line["output"] for line in lines] == stack.synchronous(inputs)


def readme_jobs_script(port: int) -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Background jobs", 1)[1].split("\n## ", 1)[0]
    blocks = [textwrap.dedent(block) for block in re.findall(r"```sh\n(.*?)```", section, re.S)]
    assert len(blocks) == 3 and ":9101/metrics" in blocks[2]  # the third: the worker's exporter
    blocks = blocks[:2]
    # Every curl reports its status on stderr, leaving stdout as the README shows it;
    # the photo is the one "Try it" makes.
    script = "set -euo pipefail\ncurl() { command curl -w '%{stderr}@@%{http_code}\\n' \"$@\"; }\n"
    script += (".venv/bin/python -c \"from skimage import data; from PIL import Image; "
               "Image.fromarray(data.astronaut()).save('/tmp/astronaut.jpg')\"\n")
    return script + "\n".join(block.replace("localhost:8000", f"127.0.0.1:{port}") for block in blocks)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def test_job_metrics_per_model_from_the_store_and_from_the_worker(stack):
    stack.worker.stop()  # no worker: the jobs stay queued
    inputs = [texts(3, seed=71), texts(5, seed=72)]
    ids = []
    for batch in inputs:
        r = stack.submit(batch)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    web = scrape(stack.url + "/metrics")
    queued = (("model", "sentiment"), ("state", "queued"))
    assert web[("serve_http_model_jobs", queued)] == 2
    assert web[("serve_http_model_jobs", (("model", "sentiment"), ("state", "running")))] == 0
    assert web[("serve_http_job_queued_inputs", (("model", "sentiment"),))] == 8
    assert web[("serve_http_job_oldest_queued_age_seconds", (("model", "sentiment"),))] > 0

    stack.worker = JobWorker(stack.server).start()
    for job_id in ids:
        stack.wait(job_id, lambda job: job["status"] == "succeeded", "succeeded")
    port = stack.server.env["SERVE_JOB_METRICS_PORT"]
    # The new worker's own exporter: what its processes computed since it started.
    worker = wait_for(
        lambda: (found := scrape(f"http://127.0.0.1:{port}/metrics")).get(
            ("serve_http_job_attempts_total", (("model", "sentiment"), ("outcome", "succeeded")))) == 2 and found,
        30, "the worker's counts",
    )
    assert worker[("serve_http_job_inputs_total", (("model", "sentiment"), ("outcome", "ok")))] == 8
    # Batches of 2: 2 for the 3 texts, 3 for the 5.
    assert worker[("serve_http_job_batch_duration_seconds_count", (("model", "sentiment"),))] == 5
    assert worker[("serve_http_inference_duration_seconds_count", (("model", "sentiment"),))] == 5
    assert ("serve_http_model_jobs", queued) not in scrape(stack.url + "/metrics")  # nothing active
    # The README's command for the worker's exporter.
    readme = (REPO_ROOT / "README.md").read_text().split("## Background jobs", 1)[1].split("\n## ", 1)[0]
    command = re.findall(r"```sh\n(.*?)```", readme, re.S)[2].strip().replace("localhost:9101", f"127.0.0.1:{port}")
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert 'serve_http_job_inputs_total{model="sentiment",outcome="ok"} 8.0' in done.stdout.splitlines()


def test_the_readme_jobs_commands_work_as_written(stack):
    done = subprocess.run(["bash", "-c", readme_jobs_script(stack.server.port)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    statuses = [int(code) for code in re.findall(r"@@(\d{3})", done.stderr)]
    # submit, status, the polls until it succeeded, the result, the cancel of a
    # finished job (409), the upload
    assert statuses[0] in (202, 200)  # 200: a replay of the same Idempotency-Key
    assert statuses[-2:] == [409, 202] and all(code == 200 for code in statuses[1:-2])
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["model"] == "sentiment" and lines[0]["progress"]["total"] == 3
    assert [line["index"] for line in lines[1:4]] == [0, 1, 2]
    assert lines[1]["output"]["category"] in ("fresh", "rotten", "plot")
    assert lines[4]["error"]["code"] == "conflict"
    upload = lines[5]
    assert upload["model"] == "faces" and upload["progress"]["total"] == 1
    stack.wait(upload["id"], lambda job: job["status"] == "succeeded", "the uploaded job")


def test_forked_job_processes_run_a_torch_model_and_jobs_side_by_side(model_repo, tmp_path):
    """Two job processes forked from a main process that loaded torch weights:
    a forward pass in a child would hang if the main had run torch before the fork."""
    env = {"SERVE_MODEL_REPOSITORY": str(model_repo), "SERVE_JOBS_DIR": str(tmp_path / "jobs"),
           "SERVE_JOB_WORKERS": "2", "SERVE_JOB_BATCH_SIZE": "2", "WORKERS": "1"}
    with GunicornServer(tmp_path, env=env) as server, JobWorker(server) as worker:
        images = [b64(jpeg_bytes(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)))
                  for i in range(6)]
        stack = Stack("embedded", server, worker)
        slow = stack.submit(texts(6000, seed=6), shard_size=6000).json()["id"]  # one shard: one process
        stack.wait(slow, lambda job: job["status"] == "running", "the text job to start")
        r = requests.post(f"{server.url}/v1/jobs", json={"model": "tiny-yolos", "inputs": images}, timeout=30)
        torch_job = r.json()["id"]
        # The second process takes the torch job while the first is still busy.
        done = stack.wait(torch_job, lambda job: job["status"] == "succeeded", "the torch job", timeout=120)
        assert stack.job(slow)["status"] == "running"
        assert done["computed"] == 6
        lines = [json.loads(line) for line in requests.get(f"{server.url}/v1/jobs/{torch_job}/result", timeout=30).text.splitlines()]
        assert [(line["output"]["width"], line["output"]["height"]) for line in lines] == [(64, 48)] * 6
        records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        runners = {r["pid"] for r in records if r["logger"] == "jobs.runner" and re.match(r"job \w+ shard \d+/\d+: attempt", r["message"])}
        assert len(runners) == 2
        stack.wait(slow, lambda job: job["status"] == "succeeded", "the text job")
