"""Text to image end to end: a real Gunicorn and a real job worker process on
each backend (SQLite and disk; redis-server and an S3-compatible moto server
on loopback), the FastAPI book's routes, the tiny pipeline of random weights."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import textwrap

import pytest
import requests
from PIL import Image

from serving.settings import REPO_ROOT
from tests.e2e.server import JobStack, JobWorker, wait_for

pytestmark = pytest.mark.e2e


class Stack(JobStack):
    def create(self, **body) -> dict:
        r = requests.post(f"{self.url}/generated-images", json=body, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()

    def row(self, image_id: int) -> dict:
        r = requests.get(f"{self.url}/generated-images/{image_id}", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, image_id: int, until, what: str, timeout: float = 120) -> dict:
        def check():
            self.worker.check_alive()
            row = self.row(image_id)
            return row if until(row) else None

        return wait_for(check, timeout, f"image {image_id}: {what}", interval=0.02)

    def image(self, image_id: int) -> bytes:
        r = requests.get(f"{self.url}/generated-images/{image_id}/url", timeout=30)
        assert r.status_code == 200, r.text
        url = r.json()["url"]
        if self.s3 is not None:  # a pre-signed URL of the object store, not of this server
            assert url.startswith(f"{self.s3.url}/{self.s3.bucket}/") and "X-Amz-Signature=" in url
        else:
            assert url.startswith(f"{self.url}/v1/jobs/")
        got = requests.get(url, timeout=30)
        assert got.status_code == 200 and got.headers["Content-Type"] == "image/png"
        return got.content


@pytest.fixture(scope="module", params=["embedded", "redis+s3"])
def stack(request, tmp_path_factory):
    backend = request.param
    tmp = tmp_path_factory.mktemp("t2i-" + backend.replace("+", "-"))
    env = {
        "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
        "SERVE_MODELS": "tiny-diffusion",
        "SERVE_JOB_HEARTBEAT_S": "0.5",
        "SERVE_JOB_VISIBILITY_TIMEOUT_S": "3",
        "WORKERS": "2",
    }
    with Stack.running(backend, tmp, env) as built:
        yield built


def test_progress_rises_through_the_steps_then_the_url_gives_a_png_of_the_asked_size(stack):
    row = stack.create(prompt="a sunset over a beach", num_steps=50, width=96, height=64)
    early = requests.get(f"{stack.url}/generated-images/{row['id']}/url", timeout=30)
    assert early.status_code == 400
    assert early.json()["error"]["message"] == "Image is not available yet. Please try again later."
    seen = []

    def record(current: dict) -> bool:
        seen.append(current["progress"])
        return current["status"] not in ("queued", "running")

    final = stack.wait(row["id"], record, "finish")
    assert final["status"] == "succeeded" and final["progress"] == 100, final
    assert seen == sorted(seen)
    assert len({p for p in seen if 0 < p < 100}) >= 3, seen  # watched rising, step by step
    assert final["file_name"] == f"{row['job_id']}/files/00000000.png"
    image = Image.open(io.BytesIO(stack.image(row["id"])))
    assert image.format == "PNG" and image.size == (96, 64)


def test_the_same_seed_gives_the_same_bytes(stack):
    rows = [stack.create(prompt="a red cube on a table", num_steps=4, seed=seed) for seed in (123, 123, 124)]
    for row in rows:
        assert stack.wait(row["id"], lambda r: r["status"] not in ("queued", "running"), "finish")["status"] == "succeeded"
    first, again, other = (stack.image(row["id"]) for row in rows)
    assert first == again != other


def test_cancel_stops_a_generation_between_steps(stack):
    row = stack.create(prompt="a storm at sea", num_steps=50, width=256, height=256)
    running = stack.wait(row["id"], lambda r: r["status"] == "running" and r["progress"] > 0, "start")
    r = requests.delete(f"{stack.url}/v1/jobs/{row['job_id']}", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # The worker's pipeline stops at its next step, mid-image.
    stack.server.wait_for(lambda: f"job {row['job_id']} shard 0: stopped during input 1/1" in stack.worker.log(),
                          60, "the worker to stop the generation")
    job = requests.get(f"{stack.url}/v1/jobs/{row['job_id']}", timeout=30).json()
    assert job["status"] == "cancelled" and running["progress"] <= job["progress"]["percent"] < 100
    assert job["progress"]["steps_done"] < 50
    url = requests.get(f"{stack.url}/generated-images/{row['id']}/url", timeout=30)
    assert url.status_code == 400 and "cancelled" in url.json()["error"]["message"]
    # The worker is free for the next image.
    follower = stack.create(prompt="a calm sea", num_steps=2)
    assert stack.wait(follower["id"], lambda r: r["status"] == "succeeded", "the next image")["progress"] == 100


def test_a_worker_killed_mid_generation_leaves_the_image_to_the_next_one(stack):
    row = stack.create(prompt="a city at night", num_steps=50, width=128, height=128, seed=9)
    at_kill = stack.wait(row["id"], lambda r: r["status"] == "running" and r["progress"] > 0, "start")
    stack.worker.kill()  # SIGKILL, its job processes included: nothing is handed back
    assert stack.row(row["id"])["status"] == "running"
    stack.worker = JobWorker(stack.server, name="worker-after-kill").start()
    final = stack.wait(row["id"], lambda r: r["status"] not in ("queued", "running"), "finish after the kill")
    assert final["status"] == "succeeded", final
    job = requests.get(f"{stack.url}/v1/jobs/{row['job_id']}", timeout=30).json()
    assert job["attempts"] == 2 and at_kill["progress"] < 100
    assert "stopped answering; queued again" in stack.worker.log()
    assert Image.open(io.BytesIO(stack.image(row["id"]))).size == (128, 128)


def readme_script(port: int) -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Text to image", 1)[1].split("\n## ", 1)[0]
    blocks = [textwrap.dedent(block) for block in re.findall(r"```sh\n(.*?)```", section, re.S)]
    assert len(blocks) >= 2, "the section's HTTPie and curl blocks"
    runnable = [block for block in blocks if "# needs internet" not in block]
    script = "set -euo pipefail\n"
    return script + "\n".join(block.replace("localhost:8000", f"127.0.0.1:{port}").replace(":8000/", f":{port}/")
                              for block in runnable)


def test_the_readme_commands_work_as_written(stack):
    # Row 1 is this module's first image when the module runs whole: the README's ids are a fresh server's.
    env = {**os.environ, "PATH": f"{REPO_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    # A terminal on stdin, as a user's: HTTPie reads a redirected stdin as the body.
    primary, terminal = pty.openpty()
    try:
        done = subprocess.run(["bash", "-c", readme_script(stack.server.port)], cwd=REPO_ROOT, env=env,
                              stdin=terminal, capture_output=True, text=True, timeout=180)
    finally:
        os.close(terminal)
        os.close(primary)
    assert done.returncode == 0, done.stdout + done.stderr
    # HTTPie's calls: the row, then its URL, or the book's 400 while the image is drawn.
    assert '"prompt": "a sunset over a beach"' in done.stdout.replace('":"', '": "')
    assert '"url":' in done.stdout or "Image is not available yet. Please try again later." in done.stdout
    assert done.stdout.rstrip().endswith("image/png")  # curl downloaded the PNG
