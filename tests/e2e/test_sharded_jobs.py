"""Jobs cut into shards over several job worker processes, end to end, on
both backends: a real Gunicorn, one job worker with three processes, and
each backend's real servers (SQLite files; redis-server and a moto S3
server). The shards' records are read from the job store itself, to count
which process took which shard."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from jobs.records import CANCELLED, QUEUED, RUNNING, SUCCEEDED
from jobs.redis_store import RedisJobStore
from jobs.sqlite_store import SqliteJobStore
from serving.settings import REPO_ROOT
from tests.conftest import jpeg_bytes
from tests.e2e.server import S3Server, wait_for
from tests.e2e.test_jobs import Stack, texts

pytestmark = pytest.mark.e2e

PROCESSES = 3
SHARD = 20  # inputs per shard
BATCH = 10  # inputs per model call: each call of the paced model takes PACE_S
PACE_S = 0.05
PACED = {"task": "text-classification", "adapter": "tests.slow_adapter:PacedClassifier",
         "description": "Every call takes SLOW_ADAPTER_PACE_S: tests only.",
         "batching": {"max_batch_size": 64, "max_wait_ms": 0, "max_queue": 256}}


def dead(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet: it runs no more code."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


class Sharded(Stack):
    def submit_job(self, body: dict) -> dict:
        r = requests.post(f"{self.url}/v1/jobs", json=body, timeout=60)
        assert r.status_code == 202, r.text
        return r.json()

    def store(self):
        if self.backend == "embedded":
            return SqliteJobStore(Path(self.server.env["SERVE_JOBS_DIR"]) / "jobs.db")
        return RedisJobStore(self.server.env["REDIS_URL"])

    def shards(self, job_id: str):
        return self.store().shards(job_id)

    def pids(self) -> set[int]:
        return self.worker.processes()

    def predict(self, model: str, inputs: list) -> list:
        outputs = []
        for start in range(0, len(inputs), 64):
            r = requests.post(f"{self.url}/v1/models/{model}/predict", json={"inputs": inputs[start : start + 64]},
                              timeout=60)
            assert r.status_code == 200, r.text
            outputs += r.json()["outputs"]
        return outputs

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.worker.log().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module", params=["embedded", "redis+s3"])
def stack(request, tmp_path_factory):
    backend = request.param
    tmp = tmp_path_factory.mktemp("sharded-" + backend.replace("+", "-"))
    repo = tmp / "models"
    repo.mkdir()
    for name in ("sentiment", "faces"):
        shutil.copytree(REPO_ROOT / "models" / name, repo / name)
    (repo / "paced").mkdir()
    (repo / "paced" / "model.yaml").write_text(yaml.safe_dump(PACED))
    (tmp / "inputs").mkdir()
    env = {
        "SERVE_MODEL_REPOSITORY": str(repo),
        "SERVE_JOB_WORKERS": str(PROCESSES),
        "SERVE_JOB_BATCH_SIZE": str(BATCH),
        "SERVE_JOB_SHARD_SIZE": str(SHARD),
        "SERVE_JOB_HEARTBEAT_S": "0.5",
        "SERVE_JOB_VISIBILITY_TIMEOUT_S": "3",
        "SERVE_JOB_INPUT_URIS": f"s3://{S3Server.DEFAULT_BUCKET}/inputs/,{tmp / 'inputs'}",
        "SLOW_ADAPTER_PACE_S": str(PACE_S),
        "WORKERS": "2",
        "SERVE_JOB_METRICS_PORT": "0",
        "LOG_FORMAT": "json",
    }
    with Sharded.running(backend, tmp, env) as built:
        built.inputs_dir = tmp / "inputs"
        yield built


def test_a_job_is_sharded_over_every_worker_process_and_read_back_in_order(stack):
    inputs = texts(600, seed=11)  # 30 shards of 20: 2 calls of 50 ms each
    job = stack.submit_job({"model": "paced", "inputs": inputs})
    assert job["shards"] == {"total": 30, "done": 0, "size": SHARD}
    final = stack.wait(job["id"], lambda j: j["status"] not in ("queued", "running"), "finish")
    assert final["status"] == "succeeded", final
    assert final["shards"] == {"total": 30, "done": 30, "size": SHARD}
    assert final["progress"]["done"] == 600 and final["computed"] == 600 and final["attempts"] == 1
    shards = stack.shards(job["id"])
    assert len(shards) == 31 and all(s.status == SUCCEEDED and s.attempt == 1 for s in shards)
    # Every one of the three processes took shards, and nothing else did.
    took = {int(s.worker.rsplit(":", 1)[1]) for s in shards}
    assert took == stack.pids() and len(took) == PROCESSES
    lines = stack.results(job["id"])
    assert [line["index"] for line in lines] == list(range(600))
    assert [line["output"] for line in lines] == stack.predict("paced", inputs)


def test_a_real_models_sharded_results_equal_its_synchronous_answers(stack):
    inputs = texts(2000, seed=12)
    job = stack.submit_job({"model": "sentiment", "inputs": inputs, "shard_size": 150})
    assert job["shards"]["total"] == 14  # 13 of 150, and 50
    final = stack.wait(job["id"], lambda j: j["status"] not in ("queued", "running"), "finish")
    assert final["status"] == "succeeded" and final["computed"] == 2000, final
    lines = stack.results(job["id"])
    assert [line["index"] for line in lines] == list(range(2000))
    assert [line["output"] for line in lines] == stack.predict("sentiment", inputs)


def test_a_killed_worker_process_has_its_shard_taken_over_and_nothing_lost(stack):
    inputs = texts(1200, seed=13)  # 12 shards of 100: 10 calls, half a second each
    job_id = stack.submit_job({"model": "paced", "inputs": inputs, "shard_size": 100})["id"]

    def running_shard():
        busy = [s for s in stack.shards(job_id) if s.status == RUNNING and s.index < 12]
        return busy[0] if busy and stack.job(job_id)["shards"]["done"] >= 2 else None

    for _ in range(5):
        victim = wait_for(running_shard, 60, "a running shard")
        pid = int(victim.worker.rsplit(":", 1)[1])
        assert pid in stack.pids()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: dead(pid), 10, "the process to die")
        # What the dead process held: its running shard, which nobody completes
        # now (none if the kill landed between two of its shards: kill another).
        stranded = [s.index for s in stack.shards(job_id) if s.status == RUNNING and s.worker == victim.worker]
        if stranded:
            break
    assert len(stranded) == 1, stranded
    final = stack.wait(job_id, lambda j: j["status"] not in ("queued", "running"), "finish after the kill")
    assert final["status"] == "succeeded", final
    shards = stack.shards(job_id)
    taken = shards[stranded[0]]
    # The killed process's shard ran again elsewhere (the sweep gave it back);
    # no other shard did.
    assert taken.attempt == 2 and int(taken.worker.rsplit(":", 1)[1]) != pid
    assert [s.index for s in shards if s.attempt != 1] == stranded
    # No input computed twice beyond that one shard, none lost, all in order.
    assert 1200 <= final["computed"] <= 1200 + 100, final
    lines = stack.results(job_id)
    assert [line["index"] for line in lines] == list(range(1200))
    assert [line["output"] for line in lines] == stack.predict("paced", inputs)
    assert any(f"job {job_id} shard {stranded[0]}: its worker stopped answering; queued again" in r["message"]
               for r in stack.log_records())
    # huey started a process in the killed one's place.
    wait_for(lambda: len(stack.pids()) == PROCESSES and pid not in stack.pids(), 30, "a new job process")


def test_cancelling_stops_every_processes_shards(stack):
    job_id = stack.submit_job({"model": "paced", "inputs": texts(1200, seed=14)})["id"]

    def spread():
        busy = [s for s in stack.shards(job_id) if s.status == RUNNING]
        return busy if len({s.worker for s in busy}) >= 2 else None

    wait_for(spread, 60, "shards running in two processes or more")
    r = requests.delete(f"{stack.url}/v1/jobs/{job_id}", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    after = stack.shards(job_id)
    assert {s.status for s in after} <= {SUCCEEDED, CANCELLED}
    stopped = [s for s in after if s.status == CANCELLED and s.attempt > 0 and s.finished_at]
    never = [s.index for s in after if s.status == CANCELLED and s.attempt == 0]
    assert never  # the queued shards ...

    # ... and every shard that was running stops: its process says so.
    def all_stopped():
        said = {(r["pid"], r["message"]) for r in stack.log_records()}
        return all((int(s.worker.rsplit(":", 1)[1]), f"job {job_id} shard {s.index}: stopped, the job is cancelled")
                   in said for s in stopped if s.attempt > 0 and s.worker)

    wait_for(all_stopped, 30, "every running shard to stop")
    follow = stack.submit_job({"model": "paced", "inputs": texts(3 * SHARD, seed=15)})["id"]
    stack.wait(follow, lambda j: j["status"] == "succeeded", "the next job")
    # A queued shard of the cancelled job was never taken, and nothing of it is kept.
    final = stack.shards(job_id)
    assert all(final[i].attempt == 0 and final[i].status == CANCELLED for i in never)
    assert stack.job(job_id)["status"] == "cancelled" and stack.job(job_id)["progress"]["done"] < 1200
    if stack.s3 is None:
        assert not (Path(stack.server.env["SERVE_JOBS_DIR"]) / "results" / job_id).exists()
    else:
        listing = stack.s3.client().list_objects_v2(Bucket=stack.s3.bucket, Prefix=f"jobs/{job_id}/")
        assert listing.get("KeyCount", 0) == 0


def put_input(stack, name: str, data: bytes) -> str:
    """The inputs object, in the bucket (redis+s3) or the allowed folder (embedded): its URI."""
    if stack.s3 is not None:
        stack.s3.client().put_object(Bucket=stack.s3.bucket, Key=f"inputs/{name}", Body=data)
        return f"s3://{stack.s3.bucket}/inputs/{name}"
    path = stack.inputs_dir / name
    path.write_bytes(data)
    return str(path)


def test_inputs_named_by_reference_are_read_shard_by_shard(stack):
    inputs = texts(450, seed=16)
    lines = [json.dumps(text) if i % 3 else json.dumps({"text": text}) for i, text in enumerate(inputs)]
    uri = put_input(stack, "reviews.jsonl", ("\n".join(lines[:200]) + "\n\n" + "\n".join(lines[200:]) + "\n").encode())
    job = stack.submit_job({"model": "sentiment", "inputs_uri": uri, "shard_size": 100})
    assert job["inputs_uri"] == uri and job["progress"]["total"] == 450 and job["shards"]["total"] == 5
    final = stack.wait(job["id"], lambda j: j["status"] not in ("queued", "running"), "finish")
    assert final["status"] == "succeeded", final
    got = stack.results(job["id"])
    assert [line["index"] for line in got] == list(range(450))
    assert [line["output"] for line in got] == stack.predict("sentiment", inputs)
    if stack.s3 is not None:  # the results were written to the bucket too
        keys = stack.s3.client().list_objects_v2(Bucket=stack.s3.bucket, Prefix=f"jobs/{job['id']}/")["Contents"]
        assert f"jobs/{job['id']}/results.jsonl" in {item["Key"] for item in keys}


def test_a_zip_of_images_named_by_reference(stack, astronaut_jpeg):
    rng = np.random.default_rng(3)
    images = {f"img-{i:02d}.jpg": jpeg_bytes(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)) for i in range(5)}
    images["img-02.jpg"] = astronaut_jpeg
    images["img-04.jpg"] = b"not an image"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        for name in sorted(images, reverse=True):  # read back in name order, whatever the archive's order
            out.writestr(name, images[name])
    uri = put_input(stack, "photos.zip", archive.getvalue())
    job = stack.submit_job({"model": "faces", "inputs_uri": uri, "shard_size": 2})
    assert job["shards"]["total"] == 3
    final = stack.wait(job["id"], lambda j: j["status"] not in ("queued", "running"), "finish")
    assert final["status"] == "succeeded", final
    got = stack.results(job["id"])
    assert [line["index"] for line in got] == list(range(5))
    assert got[4]["error"]["code"] == "invalid_input"  # the unreadable image fails its own line
    import base64

    expected = stack.predict("faces", [base64.b64encode(images[f"img-{i:02d}.jpg"]).decode() for i in range(4)])
    assert [line["output"] for line in got[:4]] == expected
    assert [obj["label"] for obj in got[2]["output"]["objects"]] == ["face"]  # the astronaut


def test_inputs_by_reference_outside_what_is_allowed_are_refused(stack):
    before = stack.store().counts()[QUEUED] + stack.store().counts()[RUNNING]
    outside = stack.inputs_dir.parent / "secret.jsonl"
    outside.write_text('"a"\n')
    cases = [
        (str(outside), "not under a folder"),
        (str(stack.inputs_dir / ".." / "secret.jsonl"), "not under a folder"),
        ("s3://another-bucket/inputs/x.jsonl", "not under an S3 prefix"),
        ("relative/path.jsonl", "absolute local path"),
        (str(stack.inputs_dir / "missing.jsonl"), "cannot be read"),
    ]
    if stack.s3 is not None:
        cases.append((f"s3://{stack.s3.bucket}/inputs/missing.jsonl", "cannot be read"))
    for uri, why in cases:
        r = requests.post(f"{stack.url}/v1/jobs", json={"model": "sentiment", "inputs_uri": uri}, timeout=30)
        assert r.status_code == 422, (uri, r.text)
        assert r.json()["error"]["details"][0]["field"] == "inputs_uri" and why in r.json()["error"]["message"], r.text
    bad = put_input(stack, "bad.jsonl", b'"fine"\n{"text": "   "}\n')
    r = requests.post(f"{stack.url}/v1/jobs", json={"model": "sentiment", "inputs_uri": bad}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "inputs line 2", r.text
    both = requests.post(f"{stack.url}/v1/jobs", json={"model": "sentiment", "inputs": ["a"], "inputs_uri": bad},
                         timeout=30)
    assert both.status_code == 422 and both.json()["error"]["details"][0]["field"] == "inputs_uri"
    assert stack.store().counts()[QUEUED] + stack.store().counts()[RUNNING] == before  # no job made
